#include "core/losses/focal.h"

#include "core/errors.h"
#include "core/losses/iou_loss.h"
#include "core/tensor_types.h"

namespace onestage {

void checkDetectionLossInputs(const torch::Tensor& cls, const torch::Tensor& reg, const torch::Tensor& anchors,
                              const torch::Tensor& annotations) {
  checkAnchorsAndAnnotations(anchors, annotations);
  if (!cls.is_floating_point() || cls.dim() != 3)
    throw RangeError("classifications: expected a float tensor of shape [B, N, C] but received " + describeShape(cls.sizes()));
  if (!reg.is_floating_point() || reg.dim() != 3 || reg.size(2) != 4)
    throw RangeError("regressions: expected a float tensor of shape [B, N, 4] but received " + describeShape(reg.sizes()));
  const int64_t B = cls.size(0), N = cls.size(1);
  if (reg.size(0) != B || reg.size(1) != N)
    throw RangeError("regressions " + describeShape(reg.sizes()) + " do not match classifications " + describeShape(cls.sizes()));
  if (anchors.size(0) != N)
    throw RangeError("anchors: " + std::to_string(anchors.size(0)) + " anchors but the outputs have " + std::to_string(N));
  if (annotations.size(0) != B)
    throw RangeError("annotations: " + std::to_string(annotations.size(0)) + " images but the outputs have " + std::to_string(B));
  for (const auto* t : {&reg, &anchors, &annotations})
    if (t->device() != cls.device()) throw TypeError("classifications, regressions, anchors and annotations must be on one device");
}

torch::Tensor oneHotTargets(const torch::Tensor& labels, int64_t C, torch::ScalarType dtype) {
  const auto positive = labels >= 0;
  auto t = torch::zeros({labels.size(0), labels.size(1), C}, labels.options().dtype(dtype));
  return t.scatter(2, labels.clamp_min(0).unsqueeze(-1), positive.unsqueeze(-1).to(dtype));
}

torch::Tensor sigmoidFocalLoss(const torch::Tensor& x, const torch::Tensor& t, double alpha, double gamma) {
  const auto p = torch::sigmoid(x);
  const auto ce = torch::binary_cross_entropy_with_logits(x, t, {}, {}, at::Reduction::None);
  const auto pt = p * t + (1 - p) * (1 - t);
  auto loss = ce * (1 - pt).pow(gamma);
  if (alpha >= 0) loss = (alpha * t + (1 - alpha) * (1 - t)) * loss;
  return loss;
}

RegressionSums regressionSums(const std::string& type, const torch::Tensor& reg, const torch::Tensor& anchors,
                              const Assignment& a, const BoxCoder& coder, double beta) {
  const auto positive = (a.labels >= 0).unsqueeze(-1).to(reg.scalar_type());  // [B, N, 1]
  const auto npos = a.numPositives.to(reg.scalar_type());
  if (type == "none") return {torch::zeros({reg.size(0)}, reg.options()), npos};
  const auto anc = anchors.to(reg.scalar_type()).unsqueeze(0);
  if (type == "giou") {
    const auto per = giouLoss(coder.decode(anc, reg), a.boxes.to(reg.scalar_type())) * positive.squeeze(-1);
    return {per.sum(1), npos};
  }
  // non-positive anchors are assigned their own box, so targets are finite everywhere
  const auto targets = coder.encode(anc, a.boxes.to(reg.scalar_type())).detach();
  const auto diff = torch::abs(targets - reg);
  torch::Tensor per;
  if (type == "smoothL1") per = smoothL1(diff, beta);
  else if (type == "l1") per = diff;
  else throw RangeError("Expected one of smoothL1, l1, giou, none for regression but received '" + type + "'");
  return {(per * positive).sum({1, 2}), 4 * npos};
}

LossParts focalLoss(const torch::Tensor& cls, const torch::Tensor& reg, const torch::Tensor& anchors, const Assignment& a,
                    const FocalLossOptions& opts) {
  const int64_t C = cls.size(2);
  const auto dtype = cls.scalar_type();
  const auto t = oneHotTargets(a.labels, C, dtype);
  const auto valid = (a.labels != -2).unsqueeze(-1).to(dtype);  // ignored anchors contribute nothing
  const auto npos = a.numPositives.to(dtype);
  LossParts out;
  if (opts.variant == "retinanet") {
    auto p = opts.probabilities ? cls : torch::sigmoid(cls);
    p = torch::clamp(p, 1e-4, 1.0 - 1e-4);
    const auto isPos = t == 1;
    const auto alphaFactor = torch::where(isPos, torch::full_like(p, opts.alpha), torch::full_like(p, 1.0 - opts.alpha));
    const auto focalWeight = alphaFactor * torch::pow(torch::where(isPos, 1.0 - p, p), opts.gamma);
    const auto bce = -(t * torch::log(p) + (1.0 - t) * torch::log(1.0 - p));
    const auto perImage = (focalWeight * bce * valid).sum({1, 2}) / npos.clamp_min(1.0);
    out.cls = perImage.mean();
    const auto r = regressionSums(opts.regression, reg, anchors, a, opts.coder, opts.beta);
    out.reg = (r.sum / r.count.clamp_min(1.0)).mean();
    return out;
  }
  if (opts.variant != "logits")
    throw RangeError("Expected 'retinanet' or 'logits' for variant but received '" + opts.variant + "'");
  const auto loss = sigmoidFocalLoss(cls, t, opts.alpha, opts.gamma) * valid;
  const auto r = regressionSums(opts.regression, reg, anchors, a, opts.coder, opts.beta);
  if (opts.normalize == "image") {
    out.cls = (loss.sum({1, 2}) / npos.clamp_min(1.0)).mean();
    out.reg = (r.sum / npos.clamp_min(1.0)).mean();
  } else if (opts.normalize == "batch") {
    const auto total = npos.sum().clamp_min(1.0);
    out.cls = loss.sum() / total;
    out.reg = r.sum.sum() / total;
  } else {
    throw RangeError("Expected 'image' or 'batch' for normalize but received '" + opts.normalize + "'");
  }
  return out;
}

LossParts focalLoss(const torch::Tensor& cls, const torch::Tensor& reg, const torch::Tensor& anchors,
                    const torch::Tensor& annotations, const FocalLossOptions& opts) {
  checkDetectionLossInputs(cls, reg, anchors, annotations);
  const auto a = assignMaxIou(anchors, annotations, opts.assigner);
  return focalLoss(cls, reg, anchors, a, opts);
}

}  // namespace onestage
