#include "core/models/resnet.h"

#include "core/models/max_pool.h"

#include <cmath>

#include "core/errors.h"
#include "core/models/frozen_bn.h"

namespace onestage {

namespace nn = torch::nn;

namespace {
nn::Conv2d conv(int64_t in, int64_t out, int64_t k, int64_t stride, int64_t pad) {
  return nn::Conv2d(nn::Conv2dOptions(in, out, k).stride(stride).padding(pad).bias(false));
}
nn::Sequential makeDownsample(int64_t in, int64_t out, int64_t stride) {
  return nn::Sequential(conv(in, out, 1, stride, 0), nn::BatchNorm2d(out));
}
/// The block's shortcut: x, or downsample = [1×1 conv, BatchNorm] (no activation).
torch::Tensor shortcut(nn::Sequential& downsample, const torch::Tensor& x) {
  if (!downsample) return x;
  return convBatchNormAct(*downsample[0]->as<nn::Conv2d>(), *downsample[1]->as<nn::BatchNorm2d>(), x, false);
}
}  // namespace

BasicBlockImpl::BasicBlockImpl(int64_t inplanes, int64_t planes, int64_t stride) {
  conv1 = register_module("conv1", conv(inplanes, planes, 3, stride, 1));
  bn1 = register_module("bn1", nn::BatchNorm2d(planes));
  conv2 = register_module("conv2", conv(planes, planes, 3, 1, 1));
  bn2 = register_module("bn2", nn::BatchNorm2d(planes));
  if (stride != 1 || inplanes != planes * kExpansion)
    downsample = register_module("downsample", makeDownsample(inplanes, planes * kExpansion, stride));
}

torch::Tensor BasicBlockImpl::forward(const torch::Tensor& x) { return forwardUses({x, x}).main; }

BlockInput BasicBlockImpl::forwardUses(const BlockInput& x) {
  auto out = convBatchNormAct(*conv1, *bn1, x.main, true);
  auto [main, second] = batchNormActTwice(*bn2, conv2(out), shortcut(downsample, x.shortcut), true);
  return {main, second};
}

BottleneckImpl::BottleneckImpl(int64_t inplanes, int64_t planes, int64_t stride) {
  conv1 = register_module("conv1", conv(inplanes, planes, 1, 1, 0));
  bn1 = register_module("bn1", nn::BatchNorm2d(planes));
  conv2 = register_module("conv2", conv(planes, planes, 3, stride, 1));
  bn2 = register_module("bn2", nn::BatchNorm2d(planes));
  conv3 = register_module("conv3", conv(planes, planes * kExpansion, 1, 1, 0));
  bn3 = register_module("bn3", nn::BatchNorm2d(planes * kExpansion));
  if (stride != 1 || inplanes != planes * kExpansion)
    downsample = register_module("downsample", makeDownsample(inplanes, planes * kExpansion, stride));
}

torch::Tensor BottleneckImpl::forward(const torch::Tensor& x) { return forwardUses({x, x}).main; }

BlockInput BottleneckImpl::forwardUses(const BlockInput& x) {
  auto out = convBatchNormAct(*conv1, *bn1, x.main, true);
  out = convBatchNormAct(*conv2, *bn2, out, true);
  auto [main, second] = batchNormActTwice(*bn3, conv3(out), shortcut(downsample, x.shortcut), true);
  return {main, second};
}

namespace {
/// A layer's blocks one after the other on the two handles of their inputs (nn::Sequential passes one tensor).
BlockInput forwardLayer(const nn::Sequential& layer, BlockInput x) {
  for (const auto& block : layer->children()) {
    if (auto* b = block->as<BottleneckImpl>())
      x = b->forwardUses(x);
    else
      x = block->as<BasicBlockImpl>()->forwardUses(x);
  }
  return x;
}
}  // namespace

namespace {
template <typename Block>
nn::Sequential makeLayer(int64_t& inplanes, int64_t planes, int64_t blocks, int64_t stride) {
  nn::Sequential layer;
  layer->push_back(Block(inplanes, planes, stride));
  inplanes = planes * Block::Impl::kExpansion;
  for (int64_t i = 1; i < blocks; ++i) layer->push_back(Block(inplanes, planes, 1));
  return layer;
}
}  // namespace

ResNetImpl::ResNetImpl(int64_t depth) {
  std::vector<int64_t> blocks;
  bool bottleneck = depth >= 50;
  switch (depth) {
    case 18: blocks = {2, 2, 2, 2}; break;
    case 34: blocks = {3, 4, 6, 3}; break;
    case 50: blocks = {3, 4, 6, 3}; break;
    case 101: blocks = {3, 4, 23, 3}; break;
    case 152: blocks = {3, 8, 36, 3}; break;
    default: throw RangeError("Expected one of 18, 34, 50, 101, 152 for depth but received " + std::to_string(depth));
  }
  conv1 = register_module("conv1", conv(3, 64, 7, 2, 3));
  bn1 = register_module("bn1", nn::BatchNorm2d(64));
  int64_t inplanes = 64;
  const std::vector<int64_t> planes{64, 128, 256, 512};
  std::vector<nn::Sequential> layers;
  for (size_t i = 0; i < 4; ++i) {
    const int64_t stride = i == 0 ? 1 : 2;
    layers.push_back(bottleneck ? makeLayer<Bottleneck>(inplanes, planes[i], blocks[i], stride)
                                : makeLayer<BasicBlock>(inplanes, planes[i], blocks[i], stride));
    if (i >= 1) channels_.push_back(inplanes);
  }
  layer1 = register_module("layer1", layers[0]);
  layer2 = register_module("layer2", layers[1]);
  layer3 = register_module("layer3", layers[2]);
  layer4 = register_module("layer4", layers[3]);
}

BackboneFeatures ResNetImpl::forward(const torch::Tensor& input) {
  // the input in the weights' memory order (channels-last models: Detector::setChannelsLast)
  const bool nhwc = conv1->weight.is_contiguous(at::MemoryFormat::ChannelsLast) && !conv1->weight.is_contiguous();
  const auto x = nhwc ? input.contiguous(at::MemoryFormat::ChannelsLast) : input;
  auto h = convBatchNormAct(*conv1, *bn1, x, true);
  h = maxPool2d(h, 3, 2, 1);
  // each block's output as two handles: the next block's first convolution reads `main`, its shortcut `shortcut`;
  // the pyramid's lateral convolutions read `main` too (autograd sums those gradients with the next layer's)
  const auto c2 = forwardLayer(layer1, {h, h});
  const auto c3 = forwardLayer(layer2, c2);
  const auto c4 = forwardLayer(layer3, c3);
  const auto c5 = forwardLayer(layer4, c4);
  return {c3.main, c4.main, c5.main};
}

bool isResNetBackboneKey(const std::string& key) {
  for (const char* p : {"conv1.", "bn1.", "layer1.", "layer2.", "layer3.", "layer4."})
    if (key.rfind(p, 0) == 0) return true;
  return false;
}

ConvBatchNormPairs reluBatchNormPairs(torch::nn::Module& module) {
  ConvBatchNormPairs pairs;
  // the stem: where registerBackboneAtTop put it (conv1 and bn1 beside layer1 of the detector), or a ResNet's own
  const auto top = module.named_children();
  const auto* conv1 = top.find("conv1");
  const auto* bn1 = top.find("bn1");
  if (conv1 != nullptr && bn1 != nullptr && top.find("layer1") != nullptr && (*conv1)->as<nn::Conv2dImpl>() && (*bn1)->as<nn::BatchNorm2dImpl>())
    pairs.emplace_back((*conv1)->as<nn::Conv2dImpl>(), (*bn1)->as<nn::BatchNorm2dImpl>());
  for (auto& m : module.modules(/*include_self=*/false)) {
    if (auto* b = m->as<BottleneckImpl>()) {
      pairs.emplace_back(b->conv1.get(), b->bn1.get());
      pairs.emplace_back(b->conv2.get(), b->bn2.get());
    } else if (auto* basic = m->as<BasicBlockImpl>()) {
      pairs.emplace_back(basic->conv1.get(), basic->bn1.get());
    }
  }
  return pairs;
}

void freezeBatchNorm(torch::nn::Module& module) {
  for (auto& m : module.modules(false))
    if (auto* bn = m->as<torch::nn::BatchNorm2dImpl>()) bn->eval();
}

void registerBackboneAtTop(torch::nn::Module& owner, ResNet& backbone) {
  owner.register_module("conv1", backbone->conv1);
  owner.register_module("bn1", backbone->bn1);
  owner.register_module("layer1", backbone->layer1);
  owner.register_module("layer2", backbone->layer2);
  owner.register_module("layer3", backbone->layer3);
  owner.register_module("layer4", backbone->layer4);
}

void heNormalInit(torch::nn::Module& module) {
  torch::NoGradGuard noGrad;
  for (auto& m : module.modules(/*include_self=*/false)) {
    if (auto* conv = m->as<torch::nn::Conv2dImpl>()) {
      const auto& k = conv->options.kernel_size();
      conv->weight.normal_(0, std::sqrt(2.0 / static_cast<double>((*k)[0] * (*k)[1] * conv->options.out_channels())));
    } else if (auto* bn = m->as<torch::nn::BatchNorm2dImpl>()) {
      bn->weight.fill_(1);
      bn->bias.zero_();
    }
  }
}

}  // namespace onestage
