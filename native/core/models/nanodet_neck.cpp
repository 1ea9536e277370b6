#include "core/models/nanodet_neck.h"

#include "core/models/max_pool.h"

#include <cmath>

#include "core/errors.h"

namespace onestage {

namespace nn = torch::nn;
namespace F = torch::nn::functional;

namespace {
nn::Conv2d convNoBias(int64_t in, int64_t out, int64_t k, int64_t stride = 1, int64_t groups = 1) {
  return nn::Conv2d(nn::Conv2dOptions(in, out, k).stride(stride).padding(k / 2).groups(groups).bias(false));
}
nn::LeakyReLU leaky() { return nn::LeakyReLU(nn::LeakyReLUOptions().negative_slope(kNanodetLeakySlope)); }

/// ShuffleNetV2's channel_shuffle(cat(a, b), groups 2) in one copy: a [B, C, H, W], b [B, C, H, W] →
/// [B, 2C, H, W] with channel 2i from a's channel i and 2i + 1 from b's. The result is in a's memory
/// order (channels-last stays channels-last; the reference's `.contiguous()` would make it NCHW).
torch::Tensor interleaveChannels(const torch::Tensor& a, const torch::Tensor& b) {
  if (a.suggest_memory_format() == at::MemoryFormat::ChannelsLast) {
    // [B, H, W, C] views of both (no copy), stacked on a new last dimension: [B, H, W, C, 2]
    const auto nhwc = torch::stack({a.permute({0, 2, 3, 1}), b.permute({0, 2, 3, 1})}, 4);
    return nhwc.flatten(3, 4).permute({0, 3, 1, 2});
  }
  return torch::stack({a, b}, 2).flatten(1, 2);  // [B, C, 2, H, W] → [B, 2C, H, W]
}
}  // namespace

ShuffleV2BlockImpl::ShuffleV2BlockImpl(int64_t inp, int64_t oup, int64_t s) : stride(s) {
  const int64_t branch = oup / 2;
  if (stride == 1 && inp != branch * 2) throw RangeError("ShuffleV2Block: stride 1 needs inp == oup");
  if (stride > 1) {
    branch1 = register_module("branch1", nn::Sequential(convNoBias(inp, inp, 3, stride, inp), nn::BatchNorm2d(inp),
                                                          convNoBias(inp, branch, 1), nn::BatchNorm2d(branch), leaky()));
  }
  branch2 = register_module("branch2", nn::Sequential(convNoBias(stride > 1 ? inp : branch, branch, 1), nn::BatchNorm2d(branch), leaky(),
                                                        convNoBias(branch, branch, 3, stride, branch), nn::BatchNorm2d(branch),
                                                        convNoBias(branch, branch, 1), nn::BatchNorm2d(branch), leaky()));
}

torch::Tensor ShuffleV2BlockImpl::forward(const torch::Tensor& x) {
  // channel_shuffle(cat(left, right), 2) as one interleaving copy
  if (stride == 1) {
    const auto halves = x.chunk(2, 1);
    return interleaveChannels(halves[0], branch2->forward(halves[1]));
  }
  return interleaveChannels(branch1->forward(x), branch2->forward(x));
}

ShuffleNetV2Impl::ShuffleNetV2Impl(const std::string& width) {
  if (width == "0.5x") channels = {24, 48, 96, 192};
  else if (width == "1.0x") channels = {24, 116, 232, 464};
  else if (width == "1.5x") channels = {24, 176, 352, 704};
  else if (width == "2.0x") channels = {24, 244, 488, 976};
  else throw RangeError("ShuffleNetV2 width must be 0.5x, 1.0x, 1.5x or 2.0x (received '" + width + "')");
  conv1 = register_module("conv1", nn::Sequential(nn::Conv2d(nn::Conv2dOptions(3, channels[0], 3).stride(2).padding(1).bias(false)),
                                                    nn::BatchNorm2d(channels[0]), leaky()));
  const std::vector<int64_t> repeats{4, 8, 4};
  int64_t in = channels[0];
  for (int s = 0; s < 3; ++s) {
    nn::Sequential stage;
    stage->push_back(ShuffleV2Block(in, channels[s + 1], 2));
    for (int64_t i = 1; i < repeats[s]; ++i) stage->push_back(ShuffleV2Block(channels[s + 1], channels[s + 1], 1));
    in = channels[s + 1];
    if (s == 0) stage2 = register_module("stage2", stage);
    if (s == 1) stage3 = register_module("stage3", stage);
    if (s == 2) stage4 = register_module("stage4", stage);
  }
}

BackboneFeatures ShuffleNetV2Impl::forward(const torch::Tensor& x) {
  auto h = maxPool2d(conv1->forward(x), 3, 2, 1);
  BackboneFeatures f;
  f.c3 = stage2->forward(h);
  f.c4 = stage3->forward(f.c3);
  f.c5 = stage4->forward(f.c4);
  return f;
}

GhostModuleImpl::GhostModuleImpl(int64_t inp, int64_t o, bool activation) : oup(o) {
  const int64_t init = (oup + 1) / 2;  // ceil(oup / ratio 2)
  const int64_t added = init;          // init · (ratio − 1)
  primary_conv = nn::Sequential(convNoBias(inp, init, 1), nn::BatchNorm2d(init));
  cheap_operation = nn::Sequential(convNoBias(init, added, 3, 1, init), nn::BatchNorm2d(added));
  if (activation) {
    primary_conv->push_back(leaky());
    cheap_operation->push_back(leaky());
  }
  register_module("primary_conv", primary_conv);
  register_module("cheap_operation", cheap_operation);
}

torch::Tensor GhostModuleImpl::forward(const torch::Tensor& x) {
  const auto x1 = primary_conv->forward(x);
  const auto x2 = cheap_operation->forward(x1);
  return torch::cat({x1, x2}, 1);  // GhostNet keeps all ⌈out/2⌉·2 channels here (no slice to out)
}

GhostBottleneckImpl::GhostBottleneckImpl(int64_t in, int64_t mid, int64_t out, int64_t k) {
  ghost1 = register_module("ghost1", GhostModule(in, mid, true));
  ghost2 = register_module("ghost2", GhostModule(mid, out, false));
  if (in != out)
    shortcut = register_module("shortcut", nn::Sequential(convNoBias(in, in, k, 1, in), nn::BatchNorm2d(in), convNoBias(in, out, 1), nn::BatchNorm2d(out)));
}

torch::Tensor GhostBottleneckImpl::forward(const torch::Tensor& x) {
  auto y = ghost2->forward(ghost1->forward(x));
  return y + (shortcut ? shortcut->forward(x) : x);
}

ConvBnLeakyImpl::ConvBnLeakyImpl(int64_t in, int64_t out, int64_t k) {
  conv = register_module("conv", convNoBias(in, out, k));
  bn = register_module("bn", nn::BatchNorm2d(out));
}

torch::Tensor ConvBnLeakyImpl::forward(const torch::Tensor& x) { return torch::leaky_relu(bn(conv(x)), kNanodetLeakySlope); }

namespace {
/// GhostBlocks (no residual reduce conv, as Ghost-PAN's default use_res False): `blocks` of GhostBottlenecks.
void ghostBlocks(nn::ModuleList list, int64_t in, int64_t out, int64_t expand, int64_t k, int64_t n) {
  auto holder = std::make_shared<nn::Module>();
  nn::Sequential blocks;
  for (int64_t i = 0; i < n; ++i) blocks->push_back(GhostBottleneck(i == 0 ? in : out, out * expand, out, k));
  holder->register_module("blocks", blocks);
  list->push_back(holder);
}
torch::Tensor runGhostBlocks(nn::ModuleList list, size_t i, const torch::Tensor& x) {
  auto blocks = list[i]->named_children()["blocks"];
  return std::dynamic_pointer_cast<nn::SequentialImpl>(blocks)->forward(x);
}
}  // namespace

GhostPANImpl::GhostPANImpl(const GhostPANOptions& o) : options(o) {
  const int64_t L = static_cast<int64_t>(o.inChannels.size()), C = o.outChannels, k = o.kernelSize;
  if (L != 3) throw RangeError("Ghost-PAN takes three input levels (C3, C4, C5)");
  if (o.extraLevels < 0 || o.extraLevels > 2) throw RangeError("Ghost-PAN: extraLevels must be 0, 1 or 2");
  reduce_layers = register_module("reduce_layers", nn::ModuleList());
  top_down_blocks = register_module("top_down_blocks", nn::ModuleList());
  downsamples = register_module("downsamples", nn::ModuleList());
  bottom_up_blocks = register_module("bottom_up_blocks", nn::ModuleList());
  extra_lvl_in_conv = register_module("extra_lvl_in_conv", nn::ModuleList());
  extra_lvl_out_conv = register_module("extra_lvl_out_conv", nn::ModuleList());
  for (int64_t i = 0; i < L; ++i) reduce_layers->push_back(ConvBnLeaky(o.inChannels[i], C, 1));
  for (int64_t i = L - 1; i > 0; --i) ghostBlocks(top_down_blocks, 2 * C, C, o.expand, k, o.numBlocks);
  for (int64_t i = 0; i < L - 1; ++i) {
    downsamples->push_back(DepthwiseConvModule(C, C, k, 2));
    ghostBlocks(bottom_up_blocks, 2 * C, C, o.expand, k, o.numBlocks);
  }
  for (int64_t i = 0; i < o.extraLevels; ++i) {
    extra_lvl_in_conv->push_back(DepthwiseConvModule(C, C, k, 2));
    extra_lvl_out_conv->push_back(DepthwiseConvModule(C, C, k, 2));
  }
}

std::vector<torch::Tensor> GhostPANImpl::forward(const torch::Tensor& c3, const torch::Tensor& c4, const torch::Tensor& c5) {
  std::vector<torch::Tensor> inputs{c3, c4, c5};
  for (size_t i = 0; i < inputs.size(); ++i) inputs[i] = reduce_layers->ptr<ConvBnLeakyImpl>(i)->forward(inputs[i]);
  const int64_t L = static_cast<int64_t>(inputs.size());
  const auto up = F::InterpolateFuncOptions().scale_factor(std::vector<double>{2.0, 2.0}).mode(torch::kBilinear).align_corners(false);
  std::vector<torch::Tensor> inner{inputs[L - 1]};
  for (int64_t idx = L - 1; idx > 0; --idx) {
    // autocast upsamples in float32; back to the lateral's type here, or the concatenation would promote
    // both halves to float32 and the next convolution cast them back (same values, forward and backward)
    const auto upsampled = F::interpolate(inner.front(), up).to(inputs[idx - 1].scalar_type());
    inner.insert(inner.begin(), runGhostBlocks(top_down_blocks, static_cast<size_t>(L - 1 - idx), torch::cat({upsampled, inputs[idx - 1]}, 1)));
  }
  std::vector<torch::Tensor> outs{inner[0]};
  for (int64_t idx = 0; idx < L - 1; ++idx) {
    const auto down = downsamples->ptr<DepthwiseConvModuleImpl>(idx)->forward(outs.back());
    outs.push_back(runGhostBlocks(bottom_up_blocks, static_cast<size_t>(idx), torch::cat({down, inner[idx + 1]}, 1)));
  }
  for (size_t i = 0; i < extra_lvl_in_conv->size(); ++i)
    outs.push_back(extra_lvl_in_conv->ptr<DepthwiseConvModuleImpl>(i)->forward(inputs[L - 1]) + extra_lvl_out_conv->ptr<DepthwiseConvModuleImpl>(i)->forward(outs.back()));
  return outs;
}

}  // namespace onestage
