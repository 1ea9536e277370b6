#include "core/models/retinanet.h"

#include "core/autocast.h"
#include "core/models/frozen_bn.h"
#include "core/models/resnet.h"

#include <algorithm>
#include <cmath>

#include "core/errors.h"
#include "core/tensor_types.h"

namespace onestage {

namespace nn = torch::nn;

RetinaNetImpl::RetinaNetImpl(const RetinaNetConfig& config) : config_(config) {
  if (config.numClasses < 1) throw RangeError("numClasses must be at least 1");
  if (config.featureSize < 1) throw RangeError("featureSize must be at least 1");
  if (!(config.prior > 0 && config.prior < 1)) throw RangeError("prior must be in (0, 1)");
  config_.anchors = config.anchors.resolved();
  anchors_ = std::make_shared<AnchorCache>(config_.anchors);
  backbone = ResNet(config.depth);
  registerBackboneAtTop(*this, backbone);
  if (config.variant != "pytorch-retinanet" && config.variant != "torchvision" && config.variant != "torchvision-v2")
    throw RangeError("variant must be 'pytorch-retinanet', 'torchvision' or 'torchvision-v2' (received '" + config.variant + "')");
  if (config.trainableBackboneLayers < 0 || config.trainableBackboneLayers > 5) throw RangeError("trainableBackboneLayers must be between 0 and 5");
  const auto ch = backbone->featureChannels();
  fpn = register_module("fpn", PyramidFeatures(ch[0], ch[1], ch[2], config.featureSize, 5, config.variant == "torchvision"));
  const int64_t A = config_.anchors.anchorsPerLocation();
  const int64_t gn = config.variant == "torchvision-v2" ? 32 : 0;
  regressionModel = register_module("regressionModel", RetinaSubnet(config.featureSize, A, 4, config.featureSize, gn));
  classificationModel =
      register_module("classificationModel", RetinaSubnet(config.featureSize, A, config.numClasses, config.featureSize, gn));
  initialiseParameters();
  if (config.trainableBackboneLayers < 5) {
    // torchvision's _resnet_fpn_extractor: parameters of layers outside the top `trainable` ones get no gradient
    const std::vector<std::string> order{"layer4", "layer3", "layer2", "layer1", "conv1"};
    const std::vector<std::string> trained(order.begin(), order.begin() + config.trainableBackboneLayers);
    for (auto& p : named_parameters(true)) {
      if (!isBackboneKey(p.key())) continue;
      const bool train = std::any_of(trained.begin(), trained.end(), [&](const std::string& l) { return p.key().rfind(l, 0) == 0; });
      if (!train) p.value().set_requires_grad(false);
    }
  }
  train(true);
}

void RetinaNetImpl::initialiseParameters() {
  heNormalInit(*this);
  torch::NoGradGuard noGrad;
  if (config_.freezeBnAffine)
    for (auto& m : modules(/*include_self=*/false))
      if (auto* bn = m->as<nn::BatchNorm2dImpl>()) {
        bn->weight.set_requires_grad(false);
        bn->bias.set_requires_grad(false);
      }
  classificationModel->output->weight.zero_();
  classificationModel->output->bias.fill_(-std::log((1.0 - config_.prior) / config_.prior));
  regressionModel->output->weight.zero_();
  regressionModel->output->bias.zero_();
}

void RetinaNetImpl::reinitialiseClassifier() {
  torch::NoGradGuard noGrad;
  if (config_.variant == "pytorch-retinanet") classificationModel->output->weight.zero_();
  else classificationModel->output->weight.normal_(0, 0.01);  // torchvision's RetinaNetClassificationHead
  classificationModel->output->bias.fill_(-std::log((1.0 - config_.prior) / config_.prior));
}

void RetinaNetImpl::train(bool on) {
  nn::Module::train(on);
  if (on && config_.freezeBn) freezeBatchNorm(*this);
}

bool RetinaNetImpl::isBackboneKey(const std::string& key) const { return isResNetBackboneKey(key); }

RetinaNetOutput RetinaNetImpl::forward(const torch::Tensor& images) {
  checkDetectorInput(images, parameters().front().device());
  RetinaNetOutput out;
  out.backbone = backbone->forward(images);
  out.pyramid = fpn->forward(out.backbone.c3, out.backbone.c4, out.backbone.c5);
  std::vector<torch::Tensor> reg, cls;
  for (const auto& p : out.pyramid) {
    reg.push_back(regressionModel->forward(p));
    cls.push_back(classificationModel->forward(p));
  }
  out.regression = torch::cat(reg, 1);
  out.classification = torch::cat(cls, 1);
  out.anchors = anchors_->get(images.size(2), images.size(3), images.device());
  if (out.anchors.size(0) != out.regression.size(1))
    throw std::logic_error("anchor count " + std::to_string(out.anchors.size(0)) + " does not match the head outputs " +
                           std::to_string(out.regression.size(1)) + " (anchor strides must match the pyramid)");
  return out;
}

Detections RetinaNetImpl::postprocess(const RetinaNetOutput& out, const torch::Tensor& limits,
                                      const DetectOptions& opts) const {
  torch::NoGradGuard noGrad;
  const auto scores = torch::sigmoid(out.classification.detach());  // [B, N, C]
  const auto deltas = out.regression.detach();
  const int64_t B = scores.size(0);
  std::vector<int64_t> levels;
  for (const auto& p : out.pyramid) levels.push_back(p.size(2) * p.size(3) * config_.anchors.anchorsPerLocation());
  const auto decode = [&](const torch::Tensor& location) {
    const int64_t K = location.size(1);
    const auto anchors = out.anchors.index_select(0, location.reshape({-1})).view({B, K, 4});
    const auto d = deltas.gather(1, location.unsqueeze(-1).expand({B, K, 4}));
    return config_.coder.decode(anchors, d);
  };
  return selectAndSuppress(scores, levels, decode, limits, opts);
}

Detections RetinaNetImpl::detect(const torch::Tensor& images, const torch::Tensor& scales, const torch::Tensor& sizes,
                                 const DetectOptions& opts) {
  torch::NoGradGuard noGrad;
  const auto frame = detectionFrame(images, scales, sizes);
  RetinaNetOutput out;
  {
    const Bf16Forward bf16(*this, images.device(), opts.amp, ConvWeightCopies::Purpose::detection);
    const FoldedBatchNorms folds(opts.amp ? reluBatchNormPairs(*this) : ConvBatchNormPairs{});  // under amp: the BatchNorms folded in one pass
    out = forward(images);
  }
  out.classification = out.classification.to(torch::kFloat);
  out.regression = out.regression.to(torch::kFloat);
  auto det = postprocess(out, frame.limits, opts);
  toOriginalPixels(det, frame);
  return det;
}

}  // namespace onestage
