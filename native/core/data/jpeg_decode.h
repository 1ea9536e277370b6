// Decoding JPEG files with libjpeg-turbo straight into a caller's buffer, resized as Pillow resizes
// (core/data/resample.h) and optionally mirrored and cropped — the DataLoader's fast path for JPEGs.
// A file this decoder does not take (not a JPEG, CMYK, an embedded ICC profile, any libjpeg warning
// such as corrupt or truncated data, over the pixel limit, unreadable) is declined with the reason, and
// the caller decodes it another way (sharp), which also reports errors. No LibTorch; scratch memory is
// reused per thread, so a thread that decodes many pictures touches no fresh memory.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace onestage {

struct JpegRequest {
  std::string file;
  /// Output size (before `extract`); 0 × 0: the picture's own size.
  int width = 0, height = 0;
  /// Mirror left–right after resizing.
  bool flip = false;
  /// Window of the resized (and mirrored) picture to keep; width 0: all of it.
  int extractLeft = 0, extractTop = 0, extractWidth = 0, extractHeight = 0;
  /// Pictures with more pixels than this are declined.
  uint64_t maxPixels = 0x3fffull * 0x3fffull;
};

struct JpegOutcome {
  /// false: declined (see `reason`); `out` may have been written.
  bool decoded = false;
  std::string reason;
  /// Declined for what the file is (not a JPEG, CMYK, an ICC profile): any request for it would be.
  bool lasting = false;
  /// The output's size (the window's, with `extract`).
  int width = 0, height = 0;
  /// The DCT scaling libjpeg decoded at (1, 2, 4 or 8: a shrink by that factor before the resize).
  int shrink = 1;
};

struct JpegHeader {
  /// false: not read (see `reason`; `lasting`: the file is not a JPEG).
  bool read = false;
  std::string reason;
  bool lasting = false;
  /// The picture's size in its frame header (no EXIF rotation).
  int width = 0, height = 0;
};

/// The size of a JPEG from its header: the first 64 KiB of the file, all of it where the frame header
/// comes later.
JpegHeader readJpegHeader(const std::string& file);

/// Whether this build has the JPEG decoder (libjpeg-turbo found at build time).
bool jpegDecoderAvailable();

/// The libjpeg-turbo version compiled in ("2.1.5"), empty without the decoder.
std::string jpegDecoderVersion();

/// Decodes `request.file` to RGB uint8 (height × width × 3, row-major) into out[0 … capacity).
/// Resizing: with a target smaller than half the picture on both axes libjpeg first decodes at 1/s
/// (s = 2, 4, 8: the largest with s ≤ min(⌊W / 2w⌋, ⌊H / 2h⌋), as Pillow's `draft` for twice the target)
/// and the resize reads the window (0, 0, W/s, H/s) of that, as `Image.draft` + `Image.resize(box=…)`;
/// otherwise the full picture is resized (`Image.resize`). Declines when the output does not fit `capacity`.
JpegOutcome decodeJpegFile(const JpegRequest& request, uint8_t* out, size_t capacity);

}  // namespace onestage
