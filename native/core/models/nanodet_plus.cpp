#include "core/models/nanodet_plus.h"

#include "core/autocast.h"
#include "core/models/frozen_bn.h"
#include "core/models/resnet.h"

#include "core/errors.h"
#include "core/losses/nanodet_loss.h"
#include "core/priors.h"
#include "core/tensor_types.h"

namespace onestage {

namespace nn = torch::nn;

namespace {
/// ShuffleNetV2's _initialize_weights: convs N(0, 1 / in-channels per group), BatchNorm weight 1, bias 1e-4.
void shuffleNetInit(torch::nn::Module& module) {
  torch::NoGradGuard noGrad;
  for (auto& m : module.modules(false)) {
    if (auto* conv = m->as<torch::nn::Conv2dImpl>()) {
      conv->weight.normal_(0, 1.0 / static_cast<double>(conv->weight.size(1)));
      if (conv->bias.defined()) conv->bias.zero_();
    } else if (auto* bn = m->as<torch::nn::BatchNorm2dImpl>()) {
      bn->weight.fill_(1);
      bn->bias.fill_(1e-4);
      bn->running_mean.zero_();
    }
  }
}
}  // namespace

void NanoDetPlusConfig::check() const {
  if (numClasses < 1) throw RangeError("numClasses must be at least 1");
  if (fpnChannels < 1 || headChannels < 1 || auxChannels < 1) throw RangeError("fpnChannels, headChannels and auxChannels must be at least 1");
  if (strides.size() < 3 || strides.size() > 5) throw RangeError("strides: expected 3 to 5 of 8, 16, 32, 64, 128");
  for (size_t l = 0; l < strides.size(); ++l)
    if (strides[l] != (int64_t{8} << l))
      throw RangeError("strides: the pyramid levels are P3… with strides 8, 16, 32, 64, 128 (received " + std::to_string(strides[l]) + " at position " + std::to_string(l) + ")");
  if (regMax < 1 || regMax > 64) throw RangeError("regMax must be between 1 and 64");
  if (backbone != "resnet" && backbone != "shufflenetv2") throw RangeError("backbone must be 'resnet' or 'shufflenetv2' (received '" + backbone + "')");
  if (neck != "fpn" && neck != "ghost-pan") throw RangeError("neck must be 'fpn' or 'ghost-pan' (received '" + neck + "')");
  if (neck == "ghost-pan" && strides.size() > 5) throw RangeError("strides: Ghost-PAN gives 3 to 5 levels");
  if (neckKernelSize < 1 || neckKernelSize % 2 == 0) throw RangeError("neck kernelSize must be odd");
  if (auxGroups < 1 || auxChannels % auxGroups != 0)
    throw RangeError("auxChannels (" + std::to_string(auxChannels) + ") must be divisible by auxGroups (" + std::to_string(auxGroups) + ")");
}

NanoDetPlusImpl::NanoDetPlusImpl(const NanoDetPlusConfig& config) : config_(config) {
  config_.check();
  std::vector<int64_t> ch;
  if (config.backbone == "resnet") {
    backbone = ResNet(config.depth);
    registerBackboneAtTop(*this, backbone);
    ch = backbone->featureChannels();
  } else {
    shufflenet = register_module("backbone", ShuffleNetV2(config.backboneWidth));
    ch = shufflenet->featureChannels();
  }
  const auto levels = static_cast<int64_t>(config.strides.size());
  GhostPANOptions panOptions;
  panOptions.inChannels = ch;
  panOptions.outChannels = config.fpnChannels;
  panOptions.kernelSize = config.neckKernelSize;
  panOptions.extraLevels = levels - 3;
  if (config.neck == "fpn") fpn = register_module("fpn", PyramidFeatures(ch[0], ch[1], ch[2], config.fpnChannels, levels));
  else pan = register_module("fpn", GhostPAN(panOptions));
  NanoDetPlusHeadOptions h;
  h.numClasses = config.numClasses;
  h.inChannels = config.fpnChannels;
  h.featChannels = config.headChannels;
  h.stackedConvs = config.stackedConvs;
  h.kernelSize = config.kernelSize;
  h.convType = config.convType;
  h.regMax = config.regMax;
  h.levels = levels;
  head = register_module("head", NanoDetPlusHead(h));
  // backbone and pyramid: He-normal as the RetinaNet path (the heads keep NanoDet's N(0, 0.01))
  if (backbone) heNormalInit(*backbone);
  else shuffleNetInit(*shufflenet);
  if (fpn) heNormalInit(*fpn);
  else heNormalInit(*pan);
  if (config.aux) {
    if (fpn) aux_fpn = register_module("aux_fpn", PyramidFeatures(ch[0], ch[1], ch[2], config.fpnChannels, levels));
    else aux_pan = register_module("aux_fpn", GhostPAN(panOptions));
    // NanoDet's copy.deepcopy(self.fpn): the AGM's FPN starts as the main one
    torch::NoGradGuard noGrad;
    const auto src = fpn ? fpn->parameters() : pan->parameters();
    auto dst = fpn ? aux_fpn->parameters() : aux_pan->parameters();
    for (size_t i = 0; i < src.size(); ++i) dst[i].copy_(src[i]);
    SimpleConvHeadOptions a;
    a.numClasses = config.numClasses;
    a.inChannels = 2 * config.fpnChannels;
    a.featChannels = config.auxChannels;
    a.stackedConvs = config.auxStackedConvs;
    a.groups = config.auxGroups;
    a.regMax = config.regMax;
    a.levels = levels;
    aux_head = register_module("aux_head", SimpleConvHead(a));
  }
  train(true);
}

void NanoDetPlusImpl::train(bool on) {
  nn::Module::train(on);
  if (on && config_.freezeBn) freezeBatchNorm(*this);
}

bool NanoDetPlusImpl::isBackboneKey(const std::string& key) const {
  return backbone ? isResNetBackboneKey(key) : key.rfind("backbone.", 0) == 0;
}

BackboneFeatures NanoDetPlusImpl::features(const torch::Tensor& images) {
  return backbone ? backbone->forward(images) : shufflenet->forward(images);
}

std::vector<torch::Tensor> NanoDetPlusImpl::neckForward(bool aux, const torch::Tensor& c3, const torch::Tensor& c4, const torch::Tensor& c5) {
  if (fpn) return aux ? aux_fpn->forward(c3, c4, c5) : fpn->forward(c3, c4, c5);
  return aux ? aux_pan->forward(c3, c4, c5) : pan->forward(c3, c4, c5);
}

NanoDetPlusOutput NanoDetPlusImpl::run(const torch::Tensor& images, bool withAux, bool detach) {
  checkDetectorInput(images, parameters().front().device());
  if (pan && (images.size(2) % 32 != 0 || images.size(3) % 32 != 0))
    throw RangeError("images: Ghost-PAN needs a height and width divisible by 32 (received " + std::to_string(images.size(2)) + "×" +
                     std::to_string(images.size(3)) + "); pad the batch (the DataLoader pads to multiples of 32)");
  NanoDetPlusOutput out;
  out.backbone = features(images);
  const auto& f = out.backbone;
  out.pyramid = neckForward(false, f.c3, f.c4, f.c5);
  out.preds = head->forward(out.pyramid);
  if (withAux && aux_head) {
    const auto auxPyramid = detach ? neckForward(true, f.c3.detach(), f.c4.detach(), f.c5.detach()) : neckForward(true, f.c3, f.c4, f.c5);
    std::vector<torch::Tensor> dual;
    for (size_t l = 0; l < auxPyramid.size(); ++l)
      dual.push_back(torch::cat({detach ? out.pyramid[l].detach() : out.pyramid[l], auxPyramid[l]}, 1));
    out.auxPreds = aux_head->forward(dual);
  }
  out.priors = centrePriors(config_.strides, images.size(2), images.size(3), images.device());
  out.levelSizes = priorLevelSizes(config_.strides, images.size(2), images.size(3));
  if (out.priors.size(0) != out.preds.size(1))
    throw std::logic_error("prior count " + std::to_string(out.priors.size(0)) + " does not match the head outputs " + std::to_string(out.preds.size(1)));
  return out;
}

NanoDetPlusOutput NanoDetPlusImpl::forward(const torch::Tensor& images) { return run(images, false, false); }

NanoDetPlusOutput NanoDetPlusImpl::forwardTrain(const torch::Tensor& images, bool detach) { return run(images, true, detach); }

Detections NanoDetPlusImpl::detect(const torch::Tensor& images, const torch::Tensor& scales, const torch::Tensor& sizes,
                                   const DetectOptions& opts) {
  torch::NoGradGuard noGrad;
  const auto frame = detectionFrame(images, scales, sizes);
  NanoDetPlusOutput out;
  {
    const Bf16Forward bf16(*this, images.device(), opts.amp, ConvWeightCopies::Purpose::detection);
    const FoldedBatchNorms folds(opts.amp ? reluBatchNormPairs(*this) : ConvBatchNormPairs{});  // under amp with a ResNet backbone: the BatchNorms folded in one pass
    out = forward(images);
  }
  const auto preds = out.preds.to(torch::kFloat);
  const int64_t B = preds.size(0);
  const auto scores = torch::sigmoid(preds.narrow(2, 0, config_.numClasses));
  const auto decode = [&](const torch::Tensor& location) {
    const int64_t K = location.size(1);
    const auto p = preds.gather(1, location.unsqueeze(-1).expand({B, K, preds.size(2)}));
    const auto pri = out.priors.index_select(0, location.reshape({-1})).view({B, K, 4});
    return decodeDistributionBoxes(p, pri, config_.numClasses, config_.regMax);
  };
  auto det = selectAndSuppress(scores, out.levelSizes, decode, frame.limits, opts);
  toOriginalPixels(det, frame);
  return det;
}

}  // namespace onestage
