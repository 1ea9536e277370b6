#include "core/models/retinanet.h"

#include <cmath>

#include "core/errors.h"
#include "core/nms.h"
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
  // the backbone's modules sit at the top level, as in pytorch-retinanet and torchvision's resnet
  register_module("conv1", backbone->conv1);
  register_module("bn1", backbone->bn1);
  register_module("layer1", backbone->layer1);
  register_module("layer2", backbone->layer2);
  register_module("layer3", backbone->layer3);
  register_module("layer4", backbone->layer4);
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
  torch::NoGradGuard noGrad;
  for (auto& m : modules(/*include_self=*/false)) {
    if (auto* conv = m->as<nn::Conv2dImpl>()) {
      const auto& k = conv->options.kernel_size();
      const double n = static_cast<double>((*k)[0] * (*k)[1] * conv->options.out_channels());
      conv->weight.normal_(0, std::sqrt(2.0 / n));
    } else if (auto* bn = m->as<nn::BatchNorm2dImpl>()) {
      bn->weight.fill_(1);
      bn->bias.zero_();
      if (config_.freezeBnAffine) {
        bn->weight.set_requires_grad(false);
        bn->bias.set_requires_grad(false);
      }
    }
  }
  classificationModel->output->weight.zero_();
  classificationModel->output->bias.fill_(-std::log((1.0 - config_.prior) / config_.prior));
  regressionModel->output->weight.zero_();
  regressionModel->output->bias.zero_();
}

void RetinaNetImpl::train(bool on) {
  nn::Module::train(on);
  if (on && config_.freezeBn)
    for (auto& m : modules(false))
      if (auto* bn = m->as<nn::BatchNorm2dImpl>()) bn->eval();
}

bool RetinaNetImpl::isBackboneKey(const std::string& key) const {
  for (const char* p : {"conv1.", "bn1.", "layer1.", "layer2.", "layer3.", "layer4."})
    if (key.rfind(p, 0) == 0) return true;
  return false;
}

RetinaNetOutput RetinaNetImpl::forward(const torch::Tensor& images) {
  if (images.dim() != 4 || images.size(1) != 3)
    throw RangeError("images: expected shape [B, 3, H, W] but received " + describeShape(images.sizes()));
  if (images.scalar_type() != torch::kFloat32)
    throw TypeError("images: expected a float32 tensor but received " + dtypeName(images.scalar_type()));
  if (images.size(2) < 1 || images.size(3) < 1) throw RangeError("images: height and width must be at least 1");
  const auto paramDevice = parameters().front().device();
  if (images.device() != paramDevice)
    throw TypeError("images are on " + deviceName(images.device()) + " but the model is on " + deviceName(paramDevice));
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
  const int64_t B = scores.size(0), C = scores.size(2);
  std::vector<torch::Tensor> candScores, candAnchor, candLabel;
  int64_t start = 0;
  for (const auto& p : out.pyramid) {
    const int64_t n = p.size(2) * p.size(3) * config_.anchors.anchorsPerLocation();
    auto s = scores.narrow(1, start, n).reshape({B, n * C});
    auto masked = torch::where(s > opts.scoreThreshold, s, torch::full_like(s, -1));
    int64_t k = n * C;
    if (opts.topkCandidates > 0) k = std::min(k, opts.topkCandidates);
    else k = std::max<int64_t>((s > opts.scoreThreshold).sum(1).max().item<int64_t>(), 0);  // all above threshold
    if (k > 0) {
      auto [vals, idx] = masked.topk(k, 1, true, true);
      candScores.push_back(vals);
      candAnchor.push_back(idx.div(C, "floor") + start);
      candLabel.push_back(idx.remainder(C));
    }
    start += n;
  }
  const auto opt = scores.options();
  if (candScores.empty()) {
    return {torch::zeros({B, 0, 4}, opt), torch::zeros({B, 0}, opt), torch::zeros({B, 0}, opt.dtype(torch::kInt64)),
            torch::zeros({B}, opt.dtype(torch::kInt64))};
  }
  const auto cScores = torch::cat(candScores, 1);  // [B, K]
  const auto cAnchor = torch::cat(candAnchor, 1);
  const auto cLabel = torch::cat(candLabel, 1);
  const auto valid = cScores > opts.scoreThreshold;
  const int64_t K = cScores.size(1);
  const auto anchors = out.anchors.index_select(0, cAnchor.reshape({-1})).view({B, K, 4});
  const auto d = deltas.gather(1, cAnchor.unsqueeze(-1).expand({B, K, 4}));
  const auto boxes = clipBoxesPerImage(config_.coder.decode(anchors, d), limits);
  const auto keep = paddedBatchNms(boxes, cScores, cLabel, valid, opts.nmsThreshold);
  // final order: kept by decreasing score, at most maxDetections
  const auto ranked = torch::where(keep, cScores.to(torch::kFloat64), torch::full_like(cScores, -INFINITY, torch::kFloat64));
  const auto order = std::get<1>(ranked.sort(true, 1, true));
  const int64_t D = opts.maxDetections > 0 ? std::min(opts.maxDetections, K) : K;
  const auto top = order.narrow(1, 0, D);
  Detections det;
  det.count = keep.sum(1).clamp_max(D);
  det.scores = cScores.gather(1, top);
  det.labels = cLabel.gather(1, top);
  det.boxes = boxes.gather(1, top.unsqueeze(-1).expand({B, D, 4}));
  return det;
}

Detections RetinaNetImpl::detect(const torch::Tensor& images, const torch::Tensor& scalesIn, const torch::Tensor& sizesIn,
                                 const DetectOptions& opts) {
  torch::NoGradGuard noGrad;
  const int64_t B = images.size(0);
  const auto dev = images.device();
  const auto f32 = torch::TensorOptions().dtype(torch::kFloat32).device(dev);
  const auto scales = scalesIn.to(f32);
  const auto sizes = sizesIn.to(f32);
  if (scales.dim() != 1 || scales.size(0) != B)
    throw RangeError("scales: expected one per image (" + std::to_string(B) + ") but received " + describeShape(scales.sizes()));
  if (sizes.dim() != 2 || sizes.size(0) != B || sizes.size(1) != 2)
    throw RangeError("sizes: expected [" + std::to_string(B) + ", 2] (height, width) but received " + describeShape(sizes.sizes()));
  auto out = forward(images);
  // clip in input pixels to the image region (its resized size), never past the padded input
  const auto inputSize = torch::tensor({static_cast<float>(images.size(2)), static_cast<float>(images.size(3))}, f32);
  const auto limits = torch::min(sizes * scales.unsqueeze(1), inputSize.unsqueeze(0));
  auto det = postprocess(out, limits, opts);
  det.boxes = clipBoxesPerImage(det.boxes / scales.view({B, 1, 1}), sizes);
  return det;
}

}  // namespace onestage
