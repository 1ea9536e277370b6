#include "core/losses/gfocal.h"

#include "core/errors.h"
#include "core/tensor_types.h"

namespace onestage {

torch::Tensor integralDistances(const torch::Tensor& reg, int64_t regMax) {
  if (regMax < 1) throw RangeError("regMax must be at least 1");
  if (reg.dim() < 1 || reg.size(-1) != 4 * (regMax + 1))
    throw RangeError("reg: expected a last dimension of 4·(regMax+1) = " + std::to_string(4 * (regMax + 1)) + " but received " + describeShape(reg.sizes()));
  auto shape = reg.sizes().vec();
  shape.back() = 4;
  auto bins = shape;
  bins.push_back(regMax + 1);
  const auto p = torch::softmax(reg.reshape(bins), -1);
  const auto project = torch::linspace(0, static_cast<double>(regMax), regMax + 1, p.options());
  return torch::matmul(p, project).reshape(shape);
}

torch::Tensor qualityFocalLoss(const torch::Tensor& pred, const torch::Tensor& label, const torch::Tensor& score, double beta) {
  if (pred.dim() != 2) throw RangeError("pred: expected [N, C] but received " + describeShape(pred.sizes()));
  if (label.dim() != 1 || label.size(0) != pred.size(0) || score.dim() != 1 || score.size(0) != pred.size(0))
    throw RangeError("label and score: expected [" + std::to_string(pred.size(0)) + "] each but received " + describeShape(label.sizes()) + " and " + describeShape(score.sizes()));
  const int64_t C = pred.size(1);
  const auto sigma = torch::sigmoid(pred);
  const auto negative = torch::binary_cross_entropy_with_logits(pred, torch::zeros_like(pred), {}, {}, at::Reduction::None) * sigma.pow(beta);
  const auto lab = label.to(torch::kLong);
  const auto isPositive = lab.ge(0).logical_and(lab.lt(C));
  // the positive's own class: BCE against its IoU target, put in place of the negative term (NanoDet's
  // loss[pos, label] = …) — one column per row, not a second pass over every class
  const auto column = torch::where(isPositive, lab, torch::zeros_like(lab)).unsqueeze(1);
  const auto x = pred.gather(1, column).squeeze(1);
  const auto s = sigma.gather(1, column).squeeze(1);
  const auto target = score.to(pred.scalar_type());
  const auto positive = torch::binary_cross_entropy_with_logits(x, target, {}, {}, at::Reduction::None) * (target - s).abs().pow(beta);
  const auto keep = negative.gather(1, column).squeeze(1);
  return negative.scatter(1, column, torch::where(isPositive, positive, keep).unsqueeze(1)).sum(1);
}

torch::Tensor distributionFocalLoss(const torch::Tensor& pred, const torch::Tensor& label) {
  if (pred.dim() != 2) throw RangeError("pred: expected [N, regMax+1] but received " + describeShape(pred.sizes()));
  if (label.dim() != 1 || label.size(0) != pred.size(0))
    throw RangeError("label: expected [" + std::to_string(pred.size(0)) + "] but received " + describeShape(label.sizes()));
  const auto y = label.to(pred.scalar_type());
  const auto left = y.to(torch::kLong);  // truncation, as label.long()
  const auto right = left + 1;
  const auto wl = right.to(pred.scalar_type()) - y;
  const auto wr = y - left.to(pred.scalar_type());
  const auto logp = torch::log_softmax(pred, 1);
  const int64_t bins = pred.size(1);
  const auto ceLeft = -logp.gather(1, left.clamp(0, bins - 1).unsqueeze(1)).squeeze(1);
  const auto ceRight = -logp.gather(1, right.clamp(0, bins - 1).unsqueeze(1)).squeeze(1);
  return ceLeft * wl + ceRight * wr;
}

}  // namespace onestage
