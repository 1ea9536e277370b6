// Batching decoded images: HWC uint8 RGB → [B, 3, H, W] float32, normalised (x/255 − mean) / std
// (computed in double, rounded once, as pytorch-retinanet's numpy Normalizer), zero-padded after
// normalisation (pytorch-retinanet's collater pads with 0 too).
#pragma once
#include <torch/torch.h>

#include <array>
#include <vector>

namespace onestage {

struct ImageView {
  const uint8_t* data;  // height × width × 3, row-major
  int64_t height, width;
};

/// → [B, 3, H, W] float32 on the CPU (in page-locked memory when `options` say so); every image must
/// fit in H × W.
torch::Tensor collateImages(const std::vector<ImageView>& images, int64_t H, int64_t W, const std::array<double, 3>& mean,
                            const std::array<double, 3>& std, const torch::TensorOptions& options = torch::kFloat32);

/// The normalised float of each channel and byte value, (v/255 − mean)/std computed in double and
/// rounded once: collateImages' values and normalisePacked's.
std::array<std::array<float, 256>, 3> normalisationTable(const std::array<double, 3>& mean, const std::array<double, 3>& std);

/// The images, unnormalised, in one [B, H, W, 3] uint8 CPU tensor (zero padded below and right; in
/// page-locked memory when `options` say so): a quarter of collateImages' bytes to copy to a GPU.
torch::Tensor packImages(const std::vector<ImageView>& images, int64_t H, int64_t W, const torch::TensorOptions& options = torch::kUInt8);

/// packed [B, H, W, 3] uint8 (any device; packImages' layout), sizes {height, width} per image →
/// [B, 3, H, W] float32 on packed's device, contiguous: the values of collateImages bit for bit (the
/// same table, gathered), zero outside each image.
torch::Tensor normalisePacked(const torch::Tensor& packed, const std::vector<std::array<int64_t, 2>>& sizes, const std::array<double, 3>& mean,
                              const std::array<double, 3>& std);

}  // namespace onestage
