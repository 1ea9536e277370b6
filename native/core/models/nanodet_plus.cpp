#include "core/models/nanodet_plus.h"

#include "core/errors.h"
#include "core/losses/nanodet_loss.h"
#include "core/priors.h"
#include "core/tensor_types.h"

namespace onestage {

namespace nn = torch::nn;

void NanoDetPlusConfig::check() const {
  if (numClasses < 1) throw RangeError("numClasses must be at least 1");
  if (fpnChannels < 1 || headChannels < 1 || auxChannels < 1) throw RangeError("fpnChannels, headChannels and auxChannels must be at least 1");
  if (strides.size() < 3 || strides.size() > 5) throw RangeError("strides: expected 3 to 5 of 8, 16, 32, 64, 128");
  for (size_t l = 0; l < strides.size(); ++l)
    if (strides[l] != (int64_t{8} << l))
      throw RangeError("strides: the pyramid levels are P3… with strides 8, 16, 32, 64, 128 (received " + std::to_string(strides[l]) + " at position " + std::to_string(l) + ")");
  if (regMax < 1 || regMax > 64) throw RangeError("regMax must be between 1 and 64");
  if (auxGroups < 1 || auxChannels % auxGroups != 0)
    throw RangeError("auxChannels (" + std::to_string(auxChannels) + ") must be divisible by auxGroups (" + std::to_string(auxGroups) + ")");
}

NanoDetPlusImpl::NanoDetPlusImpl(const NanoDetPlusConfig& config) : config_(config) {
  config_.check();
  backbone = ResNet(config.depth);
  registerBackboneAtTop(*this, backbone);
  const auto ch = backbone->featureChannels();
  const auto levels = static_cast<int64_t>(config.strides.size());
  fpn = register_module("fpn", PyramidFeatures(ch[0], ch[1], ch[2], config.fpnChannels, levels));
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
  heNormalInit(*backbone);
  heNormalInit(*fpn);
  if (config.aux) {
    aux_fpn = register_module("aux_fpn", PyramidFeatures(ch[0], ch[1], ch[2], config.fpnChannels, levels));
    torch::NoGradGuard noGrad;
    const auto src = fpn->parameters();
    auto dst = aux_fpn->parameters();
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

bool NanoDetPlusImpl::isBackboneKey(const std::string& key) const { return isResNetBackboneKey(key); }

NanoDetPlusOutput NanoDetPlusImpl::run(const torch::Tensor& images, bool withAux, bool detach) {
  checkDetectorInput(images, parameters().front().device());
  NanoDetPlusOutput out;
  out.backbone = backbone->forward(images);
  const auto& f = out.backbone;
  out.pyramid = fpn->forward(f.c3, f.c4, f.c5);
  out.preds = head->forward(out.pyramid);
  if (withAux && aux_head) {
    const auto auxPyramid = detach ? aux_fpn->forward(f.c3.detach(), f.c4.detach(), f.c5.detach()) : aux_fpn->forward(f.c3, f.c4, f.c5);
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
  const auto out = forward(images);
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
