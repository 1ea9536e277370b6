#include "core/assign/max_iou.h"

#include "core/errors.h"
#include "core/tensor_types.h"

namespace onestage {

void checkAnchorsAndAnnotations(const torch::Tensor& anchors, const torch::Tensor& annotations) {
  if (!anchors.is_floating_point() || anchors.dim() != 2 || anchors.size(1) != 4)
    throw RangeError("anchors: expected a float tensor of shape [N, 4] but received " + describeShape(anchors.sizes()));
  if (!annotations.is_floating_point() || annotations.dim() != 3 || annotations.size(2) != 5)
    throw RangeError("annotations: expected a float tensor of shape [B, M, 5] (x1, y1, x2, y2, label; label −1 pads) but received " +
                     describeShape(annotations.sizes()));
  if (anchors.device() != annotations.device())
    throw TypeError("anchors are on " + deviceName(anchors.device()) + " but annotations on " + deviceName(annotations.device()));
}

torch::Tensor anchorGtIou(const torch::Tensor& a, const torch::Tensor& b) {
  const auto ax1 = a.select(1, 0).view({1, -1, 1}), ay1 = a.select(1, 1).view({1, -1, 1});
  const auto ax2 = a.select(1, 2).view({1, -1, 1}), ay2 = a.select(1, 3).view({1, -1, 1});
  const auto bx1 = b.select(2, 0).unsqueeze(1), by1 = b.select(2, 1).unsqueeze(1);
  const auto bx2 = b.select(2, 2).unsqueeze(1), by2 = b.select(2, 3).unsqueeze(1);
  const auto areaB = (bx2 - bx1) * (by2 - by1);
  const auto iw = (torch::min(ax2, bx2) - torch::max(ax1, bx1)).clamp_min(0);
  const auto ih = (torch::min(ay2, by2) - torch::max(ay1, by1)).clamp_min(0);
  const auto ua = ((ax2 - ax1) * (ay2 - ay1) + areaB - iw * ih).clamp_min(1e-8);
  return iw * ih / ua;
}

Assignment assignMaxIou(const torch::Tensor& anchorsIn, const torch::Tensor& annotations, const MaxIoUAssignerOptions& opts) {
  checkAnchorsAndAnnotations(anchorsIn, annotations);
  torch::NoGradGuard noGrad;
  const auto anchors = anchorsIn.detach().to(annotations.scalar_type());
  const int64_t B = annotations.size(0), N = anchors.size(0), M = annotations.size(1);
  const auto dev = annotations.device();
  const auto i64 = torch::TensorOptions().dtype(torch::kInt64).device(dev);
  Assignment a;
  if (M == 0) {
    a.labels = torch::full({B, N}, -1, i64);
    a.assignedGt = torch::full({B, N}, -1, i64);
    a.boxes = anchors.unsqueeze(0).expand({B, N, 4}).contiguous();
    a.maxIou = torch::full({B, N}, -1.0, annotations.options());
    a.numPositives = torch::zeros({B}, i64);
    return a;
  }
  const auto gt = annotations.narrow(2, 0, 4);
  const auto cls = annotations.select(2, 4);
  const auto real = cls >= 0;        // [B, M]
  const auto ignore = cls <= -2;     // [B, M]
  auto iou = anchorGtIou(anchors, gt);  // [B, N, M]
  iou = torch::where(real.unsqueeze(1), iou, torch::full_like(iou, -1));
  auto [maxIou, argmax] = iou.max(2);  // [B, N]
  auto positive = maxIou >= opts.positiveIou;
  auto assigned = argmax;
  if (opts.lowQualityMatches) {
    const auto gtMax = std::get<0>(iou.max(1));  // [B, M]
    const auto eligible = real & (gtMax >= opts.minPositiveIou) & (gtMax > 0);
    const auto ties = (iou == gtMax.unsqueeze(1)) & eligible.unsqueeze(1);  // [B, N, M]
    const auto idx = torch::arange(M, i64).view({1, 1, M});
    const auto last = std::get<0>(torch::where(ties, idx, torch::full_like(idx, -1)).max(2));  // [B, N]
    const auto matched = last >= 0;
    assigned = torch::where(matched, last, assigned);
    positive = positive | matched;
  }
  const auto negative = (maxIou < opts.negativeIou) & ~positive;
  auto ignored = ~positive & ~negative;
  if (opts.ignoreIof > 0) {
    // intersection over the anchor's area, against ignore regions only
    const auto ax1 = anchors.select(1, 0).view({1, -1, 1}), ay1 = anchors.select(1, 1).view({1, -1, 1});
    const auto ax2 = anchors.select(1, 2).view({1, -1, 1}), ay2 = anchors.select(1, 3).view({1, -1, 1});
    const auto iw = (torch::min(ax2, gt.select(2, 2).unsqueeze(1)) - torch::max(ax1, gt.select(2, 0).unsqueeze(1))).clamp_min(0);
    const auto ih = (torch::min(ay2, gt.select(2, 3).unsqueeze(1)) - torch::max(ay1, gt.select(2, 1).unsqueeze(1))).clamp_min(0);
    const auto iof = iw * ih / ((ax2 - ax1) * (ay2 - ay1)).clamp_min(1e-8);
    const auto covered = (torch::where(ignore.unsqueeze(1), iof, torch::zeros_like(iof)) > opts.ignoreIof).any(2);
    ignored = ignored | covered;
    positive = positive & ~covered;
  }
  const auto gtLabels = cls.gather(1, assigned).to(torch::kInt64);
  a.labels = torch::where(positive, gtLabels, torch::where(ignored, torch::full_like(gtLabels, -2), torch::full_like(gtLabels, -1)));
  a.assignedGt = torch::where(positive, assigned, torch::full_like(assigned, -1));
  const auto gtBoxes = gt.gather(1, assigned.unsqueeze(-1).expand({B, N, 4}));
  a.boxes = torch::where(positive.unsqueeze(-1), gtBoxes, anchors.unsqueeze(0).expand({B, N, 4}));
  a.maxIou = maxIou;
  a.numPositives = positive.sum(1);
  return a;
}

}  // namespace onestage
