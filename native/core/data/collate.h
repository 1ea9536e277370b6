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

}  // namespace onestage
