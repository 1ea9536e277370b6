// Resizing RGB uint8 images with a triangle (bilinear) filter widened by the shrink factor — the
// arithmetic of Pillow's `Image.resize(size, Image.BILINEAR, box)` byte for byte: per output pixel the
// filter centred at in0 + (x + 0.5)·scale, support max(scale, 1), coefficients normalised and turned
// into 22-bit fixed point, the horizontal pass first (rounded to uint8), then the vertical pass.
// No LibTorch: runs on any thread, scratch memory reused per thread.
#pragma once
#include <cstddef>
#include <cstdint>

namespace onestage {

/// A source window of the input in input pixels (Pillow's `box`): x0 ≤ x1 ≤ width, y0 ≤ y1 ≤ height.
struct ResampleBox {
  float x0, y0, x1, y1;
};

/// in: inHeight × inWidth × 3, row-major (rows `inStride` bytes apart) → out: outHeight × outWidth × 3
/// (rows outWidth·3 bytes apart), the window `box` of the input resized; `flip` mirrors the result
/// left–right (after resizing, as `resize(...).transpose(FLIP_LEFT_RIGHT)`). Sizes ≥ 1.
void resampleBilinear(const uint8_t* in, int inWidth, int inHeight, size_t inStride, const ResampleBox& box, uint8_t* out, int outWidth,
                      int outHeight, bool flip);

}  // namespace onestage
