#include "core/models/gfl_head.h"

#include "core/errors.h"

namespace onestage {

namespace nn = torch::nn;

namespace {
torch::Tensor leaky(const torch::Tensor& x) { return torch::leaky_relu(x, kNanodetLeakySlope); }

/// NanoDet's normal_init: weight ~ N(0, std²), bias = value.
void normalInit(nn::Conv2dImpl& conv, double stddev, double bias) {
  torch::NoGradGuard noGrad;
  conv.weight.normal_(0, stddev);
  if (conv.bias.defined()) conv.bias.fill_(bias);
}

/// [B, K, H, W] per level → [B, Σ H·W, K], contiguous, in one copy (each level's [B, H·W, K] is a
/// view: of channels-last maps a contiguous one).
torch::Tensor flattenLevels(const std::vector<torch::Tensor>& outs) {
  std::vector<torch::Tensor> flat;
  for (const auto& o : outs) flat.push_back(o.flatten(2).transpose(1, 2));
  return torch::cat(flat, 1);
}
}  // namespace

DepthwiseConvModuleImpl::DepthwiseConvModuleImpl(int64_t in, int64_t out, int64_t k, int64_t stride) {
  depthwise = register_module("depthwise", nn::Conv2d(nn::Conv2dOptions(in, in, k).stride(stride).padding(k / 2).groups(in).bias(false)));
  dwnorm = register_module("dwnorm", nn::BatchNorm2d(in));
  pointwise = register_module("pointwise", nn::Conv2d(nn::Conv2dOptions(in, out, 1).bias(false)));
  pwnorm = register_module("pwnorm", nn::BatchNorm2d(out));
}

torch::Tensor DepthwiseConvModuleImpl::forward(const torch::Tensor& x) {
  return leaky(pwnorm(pointwise(leaky(dwnorm(depthwise(x))))));
}

ConvNormActImpl::ConvNormActImpl(int64_t in, int64_t out, int64_t k, const std::string& norm, int64_t groups) {
  conv = register_module("conv", nn::Conv2d(nn::Conv2dOptions(in, out, k).padding(k / 2).bias(false)));
  if (norm == "bn") {
    bn = register_module("bn", nn::BatchNorm2d(out));
  } else if (norm == "gn") {
    if (groups < 1 || out % groups != 0)
      throw RangeError("GroupNorm: " + std::to_string(out) + " channels are not divisible into " + std::to_string(groups) + " groups");
    gn = register_module("gn", nn::GroupNorm(nn::GroupNormOptions(groups, out)));
  } else {
    throw RangeError("norm must be 'bn' or 'gn'");
  }
}

torch::Tensor ConvNormActImpl::forward(const torch::Tensor& x) {
  const auto y = conv(x);
  return leaky(bn ? bn(y) : gn(y));
}

ScaleImpl::ScaleImpl(double init) { scale = register_parameter("scale", torch::full({1}, init)); }

NanoDetPlusHeadImpl::NanoDetPlusHeadImpl(const NanoDetPlusHeadOptions& o) : options(o) {
  if (o.convType != "depthwise" && o.convType != "conv") throw RangeError("head convType must be 'depthwise' or 'conv'");
  if (o.stackedConvs < 0 || o.kernelSize < 1 || o.kernelSize % 2 == 0) throw RangeError("head: stackedConvs ≥ 0 and an odd kernelSize expected");
  cls_convs = register_module("cls_convs", nn::ModuleList());
  gfl_cls = register_module("gfl_cls", nn::ModuleList());
  for (int64_t l = 0; l < o.levels; ++l) {
    nn::ModuleList stack;
    for (int64_t i = 0; i < o.stackedConvs; ++i) {
      const int64_t in = i == 0 ? o.inChannels : o.featChannels;
      if (o.convType == "depthwise") stack->push_back(DepthwiseConvModule(in, o.featChannels, o.kernelSize));
      else stack->push_back(ConvNormAct(in, o.featChannels, o.kernelSize, "bn"));
    }
    cls_convs->push_back(stack);
    const int64_t in = o.stackedConvs > 0 ? o.featChannels : o.inChannels;
    gfl_cls->push_back(nn::Conv2d(nn::Conv2dOptions(in, o.numClasses + 4 * (o.regMax + 1), 1)));
  }
  initialiseParameters();
}

void NanoDetPlusHeadImpl::initialiseParameters() {
  for (auto& m : cls_convs->modules(false))
    if (auto* conv = m->as<nn::Conv2dImpl>()) normalInit(*conv, 0.01, 0.0);
  for (size_t l = 0; l < gfl_cls->size(); ++l) normalInit(*gfl_cls->ptr<nn::Conv2dImpl>(l), 0.01, -4.595);
}

torch::Tensor NanoDetPlusHeadImpl::forward(const std::vector<torch::Tensor>& feats) {
  if (static_cast<int64_t>(feats.size()) != options.levels)
    throw RangeError("head: expected " + std::to_string(options.levels) + " feature levels but received " + std::to_string(feats.size()));
  std::vector<torch::Tensor> outs;
  for (size_t l = 0; l < feats.size(); ++l) {
    auto x = feats[l];
    for (const auto& m : *cls_convs->ptr<nn::ModuleListImpl>(l)) {
      if (auto* dw = m->as<DepthwiseConvModuleImpl>()) x = dw->forward(x);
      else x = m->as<ConvNormActImpl>()->forward(x);
    }
    outs.push_back(gfl_cls->ptr<nn::Conv2dImpl>(l)->forward(x));
  }
  return flattenLevels(outs);
}

SimpleConvHeadImpl::SimpleConvHeadImpl(const SimpleConvHeadOptions& o) : options(o) {
  cls_convs = register_module("cls_convs", nn::ModuleList());
  reg_convs = register_module("reg_convs", nn::ModuleList());
  for (int64_t i = 0; i < o.stackedConvs; ++i) {
    const int64_t in = i == 0 ? o.inChannels : o.featChannels;
    cls_convs->push_back(ConvNormAct(in, o.featChannels, 3, "gn", o.groups));
    reg_convs->push_back(ConvNormAct(in, o.featChannels, 3, "gn", o.groups));
  }
  const int64_t in = o.stackedConvs > 0 ? o.featChannels : o.inChannels;
  gfl_cls = register_module("gfl_cls", nn::Conv2d(nn::Conv2dOptions(in, o.numClasses, 3).padding(1)));
  gfl_reg = register_module("gfl_reg", nn::Conv2d(nn::Conv2dOptions(in, 4 * (o.regMax + 1), 3).padding(1)));
  scales = register_module("scales", nn::ModuleList());
  for (int64_t l = 0; l < o.levels; ++l) scales->push_back(Scale(1.0));
  initialiseParameters();
}

void SimpleConvHeadImpl::initialiseParameters() {
  for (auto* list : {&cls_convs, &reg_convs})
    for (size_t i = 0; i < (*list)->size(); ++i) normalInit(*(*list)->ptr<ConvNormActImpl>(i)->conv, 0.01, 0.0);
  normalInit(*gfl_cls, 0.01, -4.595);
  normalInit(*gfl_reg, 0.01, 0.0);
}

torch::Tensor SimpleConvHeadImpl::forward(const std::vector<torch::Tensor>& feats) {
  if (static_cast<int64_t>(feats.size()) != options.levels)
    throw RangeError("aux head: expected " + std::to_string(options.levels) + " feature levels but received " + std::to_string(feats.size()));
  std::vector<torch::Tensor> outs;
  for (size_t l = 0; l < feats.size(); ++l) {
    auto c = feats[l], r = feats[l];
    for (size_t i = 0; i < cls_convs->size(); ++i) c = cls_convs->ptr<ConvNormActImpl>(i)->forward(c);
    for (size_t i = 0; i < reg_convs->size(); ++i) r = reg_convs->ptr<ConvNormActImpl>(i)->forward(r);
    const auto reg = scales->ptr<ScaleImpl>(l)->forward(gfl_reg(r)).to(torch::kFloat);
    outs.push_back(torch::cat({gfl_cls(c).to(torch::kFloat), reg}, 1));
  }
  return flattenLevels(outs);
}

}  // namespace onestage
