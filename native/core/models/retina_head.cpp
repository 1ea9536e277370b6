#include "core/models/retina_head.h"

namespace onestage {

namespace nn = torch::nn;

RetinaSubnetImpl::RetinaSubnetImpl(int64_t in, int64_t anchors, int64_t outputs, int64_t fs)
    : numAnchors(anchors), outputsPerAnchor(outputs) {
  auto conv = [](int64_t i, int64_t o) { return nn::Conv2d(nn::Conv2dOptions(i, o, 3).padding(1)); };
  conv1 = register_module("conv1", conv(in, fs));
  conv2 = register_module("conv2", conv(fs, fs));
  conv3 = register_module("conv3", conv(fs, fs));
  conv4 = register_module("conv4", conv(fs, fs));
  output = register_module("output", conv(fs, anchors * outputs));
}

torch::Tensor RetinaSubnetImpl::forward(const torch::Tensor& x) {
  auto h = torch::relu(conv1(x));
  h = torch::relu(conv2(h));
  h = torch::relu(conv3(h));
  h = torch::relu(conv4(h));
  h = output(h);  // [B, A·K, H, W]
  return h.permute({0, 2, 3, 1}).reshape({h.size(0), -1, outputsPerAnchor});
}

}  // namespace onestage
