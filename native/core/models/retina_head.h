// RetinaNet subnets as pytorch-retinanet's RegressionModel / ClassificationModel (module names
// conv1..conv4, output): 4 × (3×3 conv, featureSize, ReLU) then a 3×3 output conv, shared across
// levels. The classification subnet returns logits (pytorch-retinanet applies the sigmoid inside).
#pragma once
#include <torch/torch.h>

namespace onestage {

struct RetinaSubnetImpl : torch::nn::Module {
  /// outputsPerAnchor: 4 (regression) or numClasses (classification).
  /// groupNorm > 0: each of the four convs has no bias and is followed by GroupNorm(groupNorm) (torchvision v2).
  RetinaSubnetImpl(int64_t inChannels, int64_t numAnchors, int64_t outputsPerAnchor, int64_t featureSize = 256, int64_t groupNorm = 0);
  /// x [B, C, H, W] → [B, H·W·numAnchors, outputsPerAnchor] (location-major, then anchor).
  torch::Tensor forward(const torch::Tensor& x);

  torch::nn::Conv2d conv1{nullptr}, conv2{nullptr}, conv3{nullptr}, conv4{nullptr}, output{nullptr};
  torch::nn::GroupNorm gn1{nullptr}, gn2{nullptr}, gn3{nullptr}, gn4{nullptr};
  int64_t numAnchors, outputsPerAnchor;
};
TORCH_MODULE(RetinaSubnet);

}  // namespace onestage
