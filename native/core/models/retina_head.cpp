#include "core/models/retina_head.h"

#include "core/errors.h"

namespace onestage {

namespace nn = torch::nn;

RetinaSubnetImpl::RetinaSubnetImpl(int64_t in, int64_t anchors, int64_t outputs, int64_t fs, int64_t groupNorm)
    : numAnchors(anchors), outputsPerAnchor(outputs) {
  auto conv = [](int64_t i, int64_t o, bool bias) { return nn::Conv2d(nn::Conv2dOptions(i, o, 3).padding(1).bias(bias)); };
  const bool gn = groupNorm > 0;
  if (gn && fs % groupNorm != 0) throw RangeError("GroupNorm: featureSize " + std::to_string(fs) + " is not divisible into " + std::to_string(groupNorm) + " groups");
  conv1 = register_module("conv1", conv(in, fs, !gn));
  conv2 = register_module("conv2", conv(fs, fs, !gn));
  conv3 = register_module("conv3", conv(fs, fs, !gn));
  conv4 = register_module("conv4", conv(fs, fs, !gn));
  if (gn) {
    gn1 = register_module("gn1", nn::GroupNorm(nn::GroupNormOptions(groupNorm, fs)));
    gn2 = register_module("gn2", nn::GroupNorm(nn::GroupNormOptions(groupNorm, fs)));
    gn3 = register_module("gn3", nn::GroupNorm(nn::GroupNormOptions(groupNorm, fs)));
    gn4 = register_module("gn4", nn::GroupNorm(nn::GroupNormOptions(groupNorm, fs)));
  }
  output = register_module("output", conv(fs, anchors * outputs, true));
}

torch::Tensor RetinaSubnetImpl::forward(const torch::Tensor& x) {
  torch::Tensor h;
  if (gn1) {
    h = torch::relu(gn1(conv1(x)));
    h = torch::relu(gn2(conv2(h)));
    h = torch::relu(gn3(conv3(h)));
    h = torch::relu(gn4(conv4(h)));
  } else {
    h = torch::relu(conv1(x));
    h = torch::relu(conv2(h));
    h = torch::relu(conv3(h));
    h = torch::relu(conv4(h));
  }
  h = output(h);  // [B, A·K, H, W]
  return h.permute({0, 2, 3, 1}).reshape({h.size(0), -1, outputsPerAnchor});
}

}  // namespace onestage
