#include "core/models/retina_head.h"

#include "core/errors.h"
#include "core/models/frozen_bn.h"

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
    // conv, bias and ReLU: the bias and ReLU as one fused epilogue on CUDA (core/models/frozen_bn.h)
    h = convBiasAct(*conv1, x, true);
    h = convBiasAct(*conv2, h, true);
    h = convBiasAct(*conv3, h, true);
    h = convBiasAct(*conv4, h, true);
  }
  h = convBiasAct(*output, h, false);  // [B, A·K, H, W]
  return h.permute({0, 2, 3, 1}).reshape({h.size(0), -1, outputsPerAnchor});
}

}  // namespace onestage
