// NanoDet-Plus heads, in NanoDet's module layout so the state_dict keys read like its own:
//  - NanoDetPlusHead (head.*): per level, `stackedConvs` × (depthwise k×k conv, BN, LeakyReLU(0.1),
//    pointwise 1×1 conv, BN, LeakyReLU) — or plain k×k conv, BN, LeakyReLU with convType "conv" —
//    then one 1×1 conv to numClasses + 4·(regMax+1) channels (classification bias −4.595);
//  - SimpleConvHead (aux_head.*), the AGM's assigner head: shared over levels, 4 × (3×3 conv,
//    GroupNorm 32, LeakyReLU) for classification and for regression, 3×3 output convs and a learned
//    scale per level on the regression output.
// Both return [B, N, numClasses + 4·(regMax+1)] over the levels, level-major then row-major, the
// order of centrePriors.
#pragma once
#include <torch/torch.h>

#include <string>
#include <vector>

namespace onestage {

/// NanoDet's LeakyReLU slope.
constexpr double kNanodetLeakySlope = 0.1;

struct DepthwiseConvModuleImpl : torch::nn::Module {
  DepthwiseConvModuleImpl(int64_t in, int64_t out, int64_t kernel, int64_t stride = 1);
  torch::Tensor forward(const torch::Tensor& x);
  torch::nn::Conv2d depthwise{nullptr}, pointwise{nullptr};
  torch::nn::BatchNorm2d dwnorm{nullptr}, pwnorm{nullptr};
};
TORCH_MODULE(DepthwiseConvModule);

/// Conv (no bias) → BatchNorm ("bn") or GroupNorm ("gn") → LeakyReLU(0.1), as NanoDet's ConvModule.
struct ConvNormActImpl : torch::nn::Module {
  ConvNormActImpl(int64_t in, int64_t out, int64_t kernel, const std::string& norm, int64_t groups = 32);
  torch::Tensor forward(const torch::Tensor& x);
  torch::nn::Conv2d conv{nullptr};
  torch::nn::BatchNorm2d bn{nullptr};
  torch::nn::GroupNorm gn{nullptr};
};
TORCH_MODULE(ConvNormAct);

struct NanoDetPlusHeadOptions {
  int64_t numClasses = 80;
  int64_t inChannels = 96;
  int64_t featChannels = 96;
  int64_t stackedConvs = 2;
  int64_t kernelSize = 5;
  std::string convType = "depthwise";  // "depthwise" | "conv"
  int64_t regMax = 7;
  int64_t levels = 4;
};

struct NanoDetPlusHeadImpl : torch::nn::Module {
  explicit NanoDetPlusHeadImpl(const NanoDetPlusHeadOptions& o);
  /// feats: one [B, inChannels, H_l, W_l] per level → [B, Σ H_l·W_l, numClasses + 4·(regMax+1)].
  torch::Tensor forward(const std::vector<torch::Tensor>& feats);
  void initialiseParameters();
  torch::nn::ModuleList cls_convs{nullptr}, gfl_cls{nullptr};
  NanoDetPlusHeadOptions options;
};
TORCH_MODULE(NanoDetPlusHead);

struct SimpleConvHeadOptions {
  int64_t numClasses = 80;
  int64_t inChannels = 192;
  int64_t featChannels = 192;
  int64_t stackedConvs = 4;
  int64_t groups = 32;  // GroupNorm groups
  int64_t regMax = 7;
  int64_t levels = 4;
};

struct SimpleConvHeadImpl : torch::nn::Module {
  explicit SimpleConvHeadImpl(const SimpleConvHeadOptions& o);
  torch::Tensor forward(const std::vector<torch::Tensor>& feats);
  void initialiseParameters();
  torch::nn::ModuleList cls_convs{nullptr}, reg_convs{nullptr}, scales{nullptr};
  torch::nn::Conv2d gfl_cls{nullptr}, gfl_reg{nullptr};
  SimpleConvHeadOptions options;
};
TORCH_MODULE(SimpleConvHead);

/// NanoDet's Scale: a learned scalar multiplier (parameter "scale").
struct ScaleImpl : torch::nn::Module {
  explicit ScaleImpl(double init = 1.0);
  torch::Tensor forward(const torch::Tensor& x) { return x * scale; }
  torch::Tensor scale;
};
TORCH_MODULE(Scale);

}  // namespace onestage
