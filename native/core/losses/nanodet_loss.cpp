#include "core/losses/nanodet_loss.h"

#include "core/boxes.h"
#include "core/errors.h"
#include "core/losses/gfocal.h"
#include "core/losses/iou_loss.h"
#include "core/tensor_types.h"

namespace onestage {

torch::Tensor decodeDistributionBoxes(const torch::Tensor& preds, const torch::Tensor& priors, int64_t numClasses, int64_t regMax) {
  const auto reg = preds.narrow(-1, numClasses, 4 * (regMax + 1));
  const auto dist = integralDistances(reg, regMax) * priors.select(-1, 2).unsqueeze(-1);
  return distanceToBox(priors.narrow(-1, 0, 2), dist);
}

NanoDetTargets nanodetTargets(const DslAssignment& a, const torch::Tensor& priors, const torch::Tensor& annotations,
                              int64_t numClasses, int64_t regMax) {
  torch::NoGradGuard noGrad;
  NanoDetTargets t;
  t.positive = a.gtIndex.ge(0);
  t.labels = torch::where(t.positive, a.labels, torch::full({}, numClasses, a.labels.options()));
  t.scores = a.ious.to(torch::kFloat32);
  t.weights = a.ignored.logical_not().to(torch::kFloat32);
  const int64_t B = a.gtIndex.size(0), N = a.gtIndex.size(1);
  const auto gt = annotations.narrow(2, 0, 4).to(torch::kFloat32);
  const auto row = a.gtIndex.clamp_min(0);
  const auto pos4 = t.positive.unsqueeze(2);
  const auto zero = torch::zeros({}, gt.options());
  t.boxes = annotations.size(1) > 0 ? torch::where(pos4, gt.gather(1, row.unsqueeze(2).expand({B, N, 4})), zero) : torch::zeros({B, N, 4}, gt.options());
  const auto p = priors.to(torch::kFloat32).unsqueeze(0);
  const auto d = boxToDistance(p.narrow(2, 0, 2), t.boxes) / p.narrow(2, 2, 1);
  t.distances = torch::where(pos4, d, zero).clamp(0, static_cast<double>(regMax) - 0.1);
  t.numPositives = t.positive.sum().to(torch::kFloat32);
  return t;
}

NanoDetHeadLoss nanodetHeadLoss(const torch::Tensor& preds, const torch::Tensor& priors, const NanoDetTargets& t,
                                int64_t numClasses, int64_t regMax, const NanoDetLossOptions& opts, const MeanReducer& reduce) {
  const auto mean = [&reduce](const torch::Tensor& x) { return reduce ? reduce(x) : x; };
  const int64_t bins = regMax + 1;
  const auto cls = preds.narrow(-1, 0, numClasses).reshape({-1, numClasses});
  const auto reg = preds.narrow(-1, numClasses, 4 * bins);
  const auto decoded = decodeDistributionBoxes(preds, priors, numClasses, regMax).reshape({-1, 4});
  NanoDetHeadLoss l;
  const auto numTotal = mean(t.numPositives).clamp_min(1.0);
  l.qfl = opts.qflWeight * (qualityFocalLoss(cls, t.labels.reshape({-1}), t.scores.reshape({-1}), opts.qflBeta) * t.weights.reshape({-1})).sum() / numTotal;
  const auto positive = t.positive.reshape({-1});
  const auto w = torch::where(positive, std::get<0>(torch::sigmoid(cls.detach()).max(1)), torch::zeros({}, cls.options()));
  const auto weightTotal = mean(w.sum()).clamp_min(1.0);
  // non-positives compare with their own (detached) box: a finite GIoU whose weight is 0
  const auto targetBoxes = torch::where(positive.unsqueeze(1), t.boxes.reshape({-1, 4}), decoded.detach());
  l.bbox = opts.bboxWeight * (giouLoss(decoded, targetBoxes, 1e-6) * w).sum() / weightTotal;
  const auto dfl = distributionFocalLoss(reg.reshape({-1, bins}), t.distances.reshape({-1}));
  l.dfl = opts.dflWeight * (dfl * w.unsqueeze(1).expand({-1, 4}).reshape({-1})).sum() / (4.0 * weightTotal);
  return l;
}

torch::Tensor NanoDetLossParts::total() const {
  auto t = main.qfl + main.bbox + main.dfl;
  if (aux.qfl.defined()) t = t + aux.qfl + aux.bbox + aux.dfl;
  return t;
}

NanoDetLossParts nanodetPlusLoss(const torch::Tensor& preds, const torch::Tensor& auxPreds, const torch::Tensor& priors,
                                 const torch::Tensor& annotations, int64_t numClasses, int64_t regMax, const NanoDetLossOptions& opts,
                                 bool assignWithMain, const MeanReducer& reduce) {
  const int64_t width = numClasses + 4 * (regMax + 1);
  if (preds.dim() != 3 || preds.size(2) != width || !preds.is_floating_point())
    throw RangeError("preds: expected a float tensor [B, N, " + std::to_string(width) + "] (numClasses + 4·(regMax+1)) but received " + describeShape(preds.sizes()));
  if (auxPreds.defined() && auxPreds.sizes() != preds.sizes())
    throw RangeError("auxPreds: expected the shape of preds " + describeShape(preds.sizes()) + " but received " + describeShape(auxPreds.sizes()));
  if (priors.dim() != 2 || priors.size(0) != preds.size(1) || priors.size(1) != 4)
    throw RangeError("priors: expected [" + std::to_string(preds.size(1)) + ", 4] but received " + describeShape(priors.sizes()));
  if (annotations.dim() != 3 || annotations.size(0) != preds.size(0) || annotations.size(2) != 5)
    throw RangeError("annotations: expected [" + std::to_string(preds.size(0)) + ", M, 5] but received " + describeShape(annotations.sizes()));
  const bool byAux = auxPreds.defined() && !assignWithMain;
  const auto& assigner = byAux ? auxPreds : preds;
  DslAssignment a;
  {
    torch::NoGradGuard noGrad;
    const auto decoded = decodeDistributionBoxes(assigner.detach(), priors, numClasses, regMax);
    a = assignDsl(assigner.detach().narrow(2, 0, numClasses), priors, decoded, annotations, opts.assigner);
  }
  const auto targets = nanodetTargets(a, priors, annotations, numClasses, regMax);
  NanoDetLossParts parts;
  parts.numPositives = a.numPositives;
  parts.main = nanodetHeadLoss(preds, priors, targets, numClasses, regMax, opts, reduce);
  if (auxPreds.defined()) parts.aux = nanodetHeadLoss(auxPreds, priors, targets, numClasses, regMax, opts, reduce);
  return parts;
}

}  // namespace onestage
