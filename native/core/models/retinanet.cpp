#include "core/models/retinanet.h"

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
  const auto ch = backbone->featureChannels();
  fpn = register_module("fpn", PyramidFeatures(ch[0], ch[1], ch[2], config.featureSize));
  const int64_t A = config_.anchors.anchorsPerLocation();
  regressionModel = register_module("regressionModel", RetinaSubnet(config.featureSize, A, 4, config.featureSize));
  classificationModel =
      register_module("classificationModel", RetinaSubnet(config.featureSize, A, config.numClasses, config.featureSize));
  initialiseParameters();
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
  auto det = postprocess(forward(images), frame.limits, opts);
  toOriginalPixels(det, frame);
  return det;
}

}  // namespace onestage
