#include "core/losses/iou_loss.h"

namespace onestage {

torch::Tensor alignedGiou(const torch::Tensor& a, const torch::Tensor& b, double eps) {
  const auto area1 = (a.select(-1, 2) - a.select(-1, 0)) * (a.select(-1, 3) - a.select(-1, 1));
  const auto area2 = (b.select(-1, 2) - b.select(-1, 0)) * (b.select(-1, 3) - b.select(-1, 1));
  const auto lt = torch::max(a.narrow(-1, 0, 2), b.narrow(-1, 0, 2));
  const auto rb = torch::min(a.narrow(-1, 2, 2), b.narrow(-1, 2, 2));
  const auto wh = (rb - lt).clamp_min(0);
  const auto overlap = wh.select(-1, 0) * wh.select(-1, 1);
  const auto epsT = torch::full({}, eps, area1.options());
  const auto uni = torch::max(area1 + area2 - overlap, epsT);
  const auto ious = overlap / uni;
  const auto elt = torch::min(a.narrow(-1, 0, 2), b.narrow(-1, 0, 2));
  const auto erb = torch::max(a.narrow(-1, 2, 2), b.narrow(-1, 2, 2));
  const auto ewh = (erb - elt).clamp_min(0);
  const auto enclose = torch::max(ewh.select(-1, 0) * ewh.select(-1, 1), epsT);
  return ious - (enclose - uni) / enclose;
}

torch::Tensor giouLoss(const torch::Tensor& pred, const torch::Tensor& target, double eps) {
  return 1 - alignedGiou(pred, target, eps);
}

torch::Tensor smoothL1(const torch::Tensor& diff, double beta) {
  if (beta <= 0) return diff;
  return torch::where(diff <= beta, (0.5 / beta) * diff.pow(2), diff - 0.5 * beta);
}

}  // namespace onestage
