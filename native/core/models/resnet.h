// ResNet backbone in torchvision's layout (conv1, bn1, layer1..4, downsample.0/1), so torchvision
// and pytorch-retinanet state_dict keys load unchanged. Depths 18/34 (BasicBlock) and 50/101/152
// (Bottleneck, stride on the 3×3 conv as torchvision v1.5 and pytorch-retinanet).
#pragma once
#include <torch/torch.h>

#include "core/models/frozen_bn.h"

#include <utility>
#include <vector>

namespace onestage {

/// A block's input as its two uses take it: `main` feeds the block's first convolution, `shortcut` its residual
/// (identity or downsample). The same values; separate handles where the previous block's BatchNorm gives them
/// (batchNormActTwice, core/models/frozen_bn.h), so that its backward receives the two gradients apart.
struct BlockInput {
  torch::Tensor main, shortcut;
};

struct BasicBlockImpl : torch::nn::Module {
  static constexpr int64_t kExpansion = 1;
  BasicBlockImpl(int64_t inplanes, int64_t planes, int64_t stride);
  torch::Tensor forward(const torch::Tensor& x);
  /// The block on its input's two handles; its output as two handles for the next block.
  BlockInput forwardUses(const BlockInput& x);
  torch::nn::Conv2d conv1{nullptr}, conv2{nullptr};
  torch::nn::BatchNorm2d bn1{nullptr}, bn2{nullptr};
  torch::nn::Sequential downsample{nullptr};
};
TORCH_MODULE(BasicBlock);

struct BottleneckImpl : torch::nn::Module {
  static constexpr int64_t kExpansion = 4;
  BottleneckImpl(int64_t inplanes, int64_t planes, int64_t stride);
  torch::Tensor forward(const torch::Tensor& x);
  /// The block on its input's two handles; its output as two handles for the next block.
  BlockInput forwardUses(const BlockInput& x);
  torch::nn::Conv2d conv1{nullptr}, conv2{nullptr}, conv3{nullptr};
  torch::nn::BatchNorm2d bn1{nullptr}, bn2{nullptr}, bn3{nullptr};
  torch::nn::Sequential downsample{nullptr};
};
TORCH_MODULE(Bottleneck);

/// C3, C4, C5 (outputs of layer2, layer3, layer4; strides 8, 16, 32).
struct BackboneFeatures {
  torch::Tensor c3, c4, c5;
};

struct ResNetImpl : torch::nn::Module {
  /// depth ∈ {18, 34, 50, 101, 152}; RangeError otherwise.
  explicit ResNetImpl(int64_t depth);
  /// x [B, 3, H, W] → C3 [B, c3, H/8, W/8], C4 [B, c4, H/16, W/16], C5 [B, c5, H/32, W/32] (ceil sizes).
  BackboneFeatures forward(const torch::Tensor& x);
  /// Channels of C3, C4, C5: 128/256/512 (18, 34) or 512/1024/2048 (50+).
  std::vector<int64_t> featureChannels() const { return channels_; }

  torch::nn::Conv2d conv1{nullptr};
  torch::nn::BatchNorm2d bn1{nullptr};
  torch::nn::Sequential layer1{nullptr}, layer2{nullptr}, layer3{nullptr}, layer4{nullptr};

 private:
  std::vector<int64_t> channels_;
};
TORCH_MODULE(ResNet);

/// Whether a state_dict key belongs to a ResNet backbone registered at the top level (conv1, bn1,
/// layer1..4), as both detectors lay it out.
bool isResNetBackboneKey(const std::string& key);

/// Registers the backbone's modules (conv1, bn1, layer1..4) at the top level of `owner`, the layout
/// of pytorch-retinanet and torchvision's resnet, so their state_dict keys load unchanged.
void registerBackboneAtTop(torch::nn::Module& owner, ResNet& backbone);

/// He-normal initialisation as pytorch-retinanet: every conv weight of `module` ~ N(0, 2/(k·k·out))
/// (biases untouched), every BatchNorm weight 1 and bias 0.
void heNormalInit(torch::nn::Module& module);

/// Every (convolution, BatchNorm) of a ResNet backbone with a ReLU after them and no residual — the stem (`module`'s conv1 and bn1 beside
/// its layer1: a ResNet, or a detector after registerBackboneAtTop), and each block's first (BasicBlock) or first two (Bottleneck) —
/// in forward order: what inference folds up front (core/models/frozen_bn.h; a convolution missing here is folded on its own).
ConvBatchNormPairs reluBatchNormPairs(torch::nn::Module& module);

/// Puts every BatchNorm layer of `module` in eval mode (frozen running statistics in train()).
void freezeBatchNorm(torch::nn::Module& module);

}  // namespace onestage
