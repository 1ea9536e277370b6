// NanoDet-Plus as its authors ship it: the ShuffleNetV2 backbone (nanodet/model/backbone/shufflenetv2.py)
// and the Ghost-PAN neck (nanodet/model/fpn/ghost_pan.py with ghostnet.py's GhostBottleneck), in
// NanoDet's module layout so that state_dict keys read like its own (backbone.stage2.0.branch2.3.weight,
// fpn.top_down_blocks.0.blocks.0.ghost1.primary_conv.0.weight, …). Activation: LeakyReLU(0.1), as the
// NanoDet-Plus configs choose.
#pragma once
#include <torch/torch.h>

#include <string>
#include <vector>

#include "core/models/gfl_head.h"
#include "core/models/resnet.h"

namespace onestage {

/// ShuffleNetV2 unit: stride 1 splits the channels, stride 2 runs both branches; then channel shuffle.
struct ShuffleV2BlockImpl : torch::nn::Module {
  ShuffleV2BlockImpl(int64_t inp, int64_t oup, int64_t stride);
  torch::Tensor forward(const torch::Tensor& x);
  torch::nn::Sequential branch1{nullptr}, branch2{nullptr};
  int64_t stride;
};
TORCH_MODULE(ShuffleV2Block);

/// ShuffleNetV2 (0.5x, 1.0x, 1.5x, 2.0x): conv1 (3×3 s2, BN, act), max-pool, stage2–4 → C3, C4, C5.
struct ShuffleNetV2Impl : torch::nn::Module {
  explicit ShuffleNetV2Impl(const std::string& widthMultiplier);
  BackboneFeatures forward(const torch::Tensor& x);
  /// Channels of stage2, stage3, stage4.
  std::vector<int64_t> featureChannels() const { return {channels[1], channels[2], channels[3]}; }
  torch::nn::Sequential conv1{nullptr}, stage2{nullptr}, stage3{nullptr}, stage4{nullptr};
  std::vector<int64_t> channels;
};
TORCH_MODULE(ShuffleNetV2);

/// GhostNet's GhostModule: a primary 1×1 conv to ⌈out/2⌉ channels and a cheap depthwise 3×3 for the rest.
struct GhostModuleImpl : torch::nn::Module {
  GhostModuleImpl(int64_t inp, int64_t oup, bool activation);
  torch::Tensor forward(const torch::Tensor& x);
  torch::nn::Sequential primary_conv{nullptr}, cheap_operation{nullptr};
  int64_t oup;
};
TORCH_MODULE(GhostModule);

/// GhostBottleneck (stride 1, no SE, as Ghost-PAN uses it): ghost1, ghost2 (linear), and a shortcut
/// (depthwise k×k, BN, 1×1, BN) when the channel count changes.
struct GhostBottleneckImpl : torch::nn::Module {
  GhostBottleneckImpl(int64_t in, int64_t mid, int64_t out, int64_t dwKernel);
  torch::Tensor forward(const torch::Tensor& x);
  GhostModule ghost1{nullptr}, ghost2{nullptr};
  torch::nn::Sequential shortcut{nullptr};
};
TORCH_MODULE(GhostBottleneck);

/// Conv (no bias) → BN → LeakyReLU: NanoDet's ConvModule (attributes conv, bn).
struct ConvBnLeakyImpl : torch::nn::Module {
  ConvBnLeakyImpl(int64_t in, int64_t out, int64_t kernel);
  torch::Tensor forward(const torch::Tensor& x);
  torch::nn::Conv2d conv{nullptr};
  torch::nn::BatchNorm2d bn{nullptr};
};
TORCH_MODULE(ConvBnLeaky);

struct GhostPANOptions {
  std::vector<int64_t> inChannels{116, 232, 464};
  int64_t outChannels = 96;
  int64_t kernelSize = 5;
  int64_t expand = 1;
  int64_t numBlocks = 1;
  int64_t extraLevels = 1;
};

/// Ghost-PAN: 1×1 reduce per level, top-down (bilinear ×2, concat, GhostBlocks), bottom-up
/// (depthwise-separable stride-2 conv, concat, GhostBlocks), then extra levels (in-conv of the top
/// reduced input + out-conv of the last output, both depthwise-separable stride 2).
struct GhostPANImpl : torch::nn::Module {
  explicit GhostPANImpl(const GhostPANOptions& o);
  std::vector<torch::Tensor> forward(const torch::Tensor& c3, const torch::Tensor& c4, const torch::Tensor& c5);
  torch::nn::ModuleList reduce_layers{nullptr}, top_down_blocks{nullptr}, downsamples{nullptr}, bottom_up_blocks{nullptr},
      extra_lvl_in_conv{nullptr}, extra_lvl_out_conv{nullptr};
  GhostPANOptions options;
};
TORCH_MODULE(GhostPAN);

}  // namespace onestage
