#include "core/assign/dsl.h"

#include <algorithm>

#include "core/errors.h"
#include "core/tensor_types.h"

namespace onestage {

torch::Tensor pairwiseIouNanodet(const torch::Tensor& a, const torch::Tensor& b, double eps) {
  const auto area1 = (a.select(-1, 2) - a.select(-1, 0)) * (a.select(-1, 3) - a.select(-1, 1));
  const auto area2 = (b.select(-1, 2) - b.select(-1, 0)) * (b.select(-1, 3) - b.select(-1, 1));
  const auto lt = torch::max(a.narrow(-1, 0, 2).unsqueeze(-2), b.narrow(-1, 0, 2).unsqueeze(-3));
  const auto rb = torch::min(a.narrow(-1, 2, 2).unsqueeze(-2), b.narrow(-1, 2, 2).unsqueeze(-3));
  const auto wh = (rb - lt).clamp_min(0);
  const auto overlap = wh.select(-1, 0) * wh.select(-1, 1);
  const auto uni = torch::max(area1.unsqueeze(-1) + area2.unsqueeze(-2) - overlap, torch::full({1}, eps, overlap.options()));
  return overlap / uni;
}

namespace {

DslAssignment assignChunk(const torch::Tensor& logits, const torch::Tensor& priors, const torch::Tensor& decoded,
                          const torch::Tensor& annotations, const DslAssignerOptions& opts) {
  const int64_t B = logits.size(0), N = logits.size(1), M = annotations.size(1);
  const auto f32 = decoded.options().dtype(torch::kFloat32);
  const auto boxes = decoded.to(torch::kFloat32);
  const auto gt = annotations.narrow(2, 0, 4).to(torch::kFloat32);   // [B, M, 4]
  const auto label = annotations.select(2, 4);
  const auto real = label.ge(0);                                      // [B, M]
  const auto centre = priors.narrow(1, 0, 2).to(torch::kFloat32);     // [N, 2]
  DslAssignment out;
  if (M == 0 || N == 0) {
    out.gtIndex = torch::full({B, N}, -1, f32.dtype(torch::kLong));
    out.labels = out.gtIndex.clone();
    out.ious = torch::zeros({B, N}, f32);
    out.ignored = torch::zeros({B, N}, f32.dtype(torch::kBool));
    out.numPositives = torch::zeros({B}, f32.dtype(torch::kLong));
    return out;
  }
  // candidates: the centre strictly inside a real box
  const auto c = centre.view({1, N, 1, 2});
  const auto lt = c - gt.narrow(2, 0, 2).unsqueeze(1);                // [B, N, M, 2]
  const auto rb = gt.narrow(2, 2, 2).unsqueeze(1) - c;
  const auto inside = std::get<0>(torch::cat({lt, rb}, 3).min(3)).gt(0).logical_and(real.unsqueeze(1));  // [B, N, M]
  const auto valid = inside.any(2);                                   // [B, N]
  const auto pairValid = valid.unsqueeze(2).logical_and(real.unsqueeze(1));
  const auto iou = pairwiseIouNanodet(boxes, gt);                     // [B, N, M]
  // classification cost without a [N, M, C] tensor: the classes other than the GT's have target 0,
  // whose terms do not depend on the GT — Σ_c minus the GT class's target-0 term plus its soft term
  const auto x = logits.to(torch::kFloat32);
  const auto sigma = torch::sigmoid(x);
  const auto negative = torch::binary_cross_entropy_with_logits(x, torch::zeros_like(x), {}, {}, at::Reduction::None) * sigma.pow(2);
  const auto negativeSum = negative.sum(2, true);                     // [B, N, 1]
  const auto cls = label.clamp_min(0).to(torch::kLong).unsqueeze(1).expand({B, N, M});
  const auto xg = x.gather(2, cls);
  const auto sg = sigma.gather(2, cls);
  const auto positive = torch::binary_cross_entropy_with_logits(xg, iou, {}, {}, at::Reduction::None) * (iou - sg).abs().pow(2);
  auto cost = negativeSum - negative.gather(2, cls) + positive + (-torch::log(iou + 1e-7)) * opts.iouFactor;
  if (opts.softCenterPrior) {
    const auto gtCentre = (gt.narrow(2, 0, 2) + gt.narrow(2, 2, 2)) / 2.0;                    // [B, M, 2]
    const auto dist = (c - gtCentre.unsqueeze(1)).pow(2).sum(3).sqrt() / priors.select(1, 2).to(torch::kFloat32).view({1, N, 1});
    cost = cost + torch::pow(10.0, dist - opts.softCenterRadius);
  }
  const auto inf = torch::full({}, std::numeric_limits<float>::infinity(), f32);
  cost = torch::where(pairValid, cost, inf);
  // dynamic k per GT from its best candidate IoUs (non-candidates count as IoU 0)
  const int64_t k = std::min<int64_t>(opts.topk, N);
  const auto candidateIou = torch::where(pairValid, iou, torch::zeros({}, f32));
  const auto dynamicK = std::get<0>(candidateIou.topk(k, 1)).sum(1).to(torch::kInt).clamp_min(1);  // [B, M]
  const auto chosen = std::get<1>(cost.topk(k, 1, /*largest=*/false, /*sorted=*/true));             // [B, k, M]
  const auto rank = torch::arange(k, chosen.options()).view({1, k, 1});
  const auto take = rank.lt(dynamicK.unsqueeze(1)).logical_and(real.unsqueeze(1));
  auto matching = torch::zeros({B, N, M}, f32.dtype(torch::kBool)).scatter(1, chosen, take).logical_and(pairValid);
  const auto count = matching.sum(2);                                 // [B, N]
  const auto lowest = cost.argmin(2);                                 // over every GT, as NanoDet
  const auto single = matching.to(torch::kByte).argmax(2);
  const auto fg = count.gt(0);
  const auto gtIdx = torch::where(count.gt(1), lowest, single);       // [B, N]
  out.gtIndex = torch::where(fg, gtIdx, torch::full({}, -1, gtIdx.options()));
  out.labels = torch::where(fg, label.to(torch::kLong).gather(1, gtIdx), torch::full({}, -1, gtIdx.options()));
  out.ious = torch::where(fg, iou.gather(2, gtIdx.unsqueeze(2)).squeeze(2), torch::zeros({}, f32));
  out.ignored = torch::zeros({B, N}, f32.dtype(torch::kBool));
  if (opts.ignoreIof > 0) {
    const auto crowd = label.le(-2);                                  // [B, M]
    const auto area = ((boxes.select(2, 2) - boxes.select(2, 0)) * (boxes.select(2, 3) - boxes.select(2, 1))).clamp_min(1e-6);
    const auto ilt = torch::max(boxes.narrow(2, 0, 2).unsqueeze(2), gt.narrow(2, 0, 2).unsqueeze(1));
    const auto irb = torch::min(boxes.narrow(2, 2, 2).unsqueeze(2), gt.narrow(2, 2, 2).unsqueeze(1));
    const auto iwh = (irb - ilt).clamp_min(0);
    const auto iof = iwh.select(3, 0) * iwh.select(3, 1) / area.unsqueeze(2);
    out.ignored = iof.gt(opts.ignoreIof).logical_and(crowd.unsqueeze(1)).any(2);
    const auto neg1 = torch::full({}, -1, gtIdx.options());
    out.gtIndex = torch::where(out.ignored, neg1, out.gtIndex);
    out.labels = torch::where(out.ignored, neg1, out.labels);
    out.ious = torch::where(out.ignored, torch::zeros({}, f32), out.ious);
  }
  out.numPositives = out.gtIndex.ge(0).sum(1);
  return out;
}

}  // namespace

DslAssignment assignDsl(const torch::Tensor& logits, const torch::Tensor& priors, const torch::Tensor& decoded,
                        const torch::Tensor& annotations, const DslAssignerOptions& opts) {
  if (logits.dim() != 3 || !logits.is_floating_point()) throw RangeError("logits: expected a float tensor [B, N, C] but received " + describeShape(logits.sizes()));
  const int64_t B = logits.size(0), N = logits.size(1);
  if (priors.dim() != 2 || priors.size(0) != N || priors.size(1) != 4)
    throw RangeError("priors: expected [" + std::to_string(N) + ", 4] but received " + describeShape(priors.sizes()));
  if (decoded.dim() != 3 || decoded.size(0) != B || decoded.size(1) != N || decoded.size(2) != 4)
    throw RangeError("decoded: expected [" + std::to_string(B) + ", " + std::to_string(N) + ", 4] but received " + describeShape(decoded.sizes()));
  if (annotations.dim() != 3 || annotations.size(0) != B || annotations.size(2) != 5 || !annotations.is_floating_point())
    throw RangeError("annotations: expected a float tensor [" + std::to_string(B) + ", M, 5] but received " + describeShape(annotations.sizes()));
  for (const auto* t : {&priors, &decoded, &annotations})
    if (t->device() != logits.device()) throw TypeError("logits, priors, decoded and annotations must be on one device");
  if (opts.topk < 1) throw RangeError("topk must be at least 1");
  torch::NoGradGuard noGrad;
  const int64_t M = annotations.size(1);
  const int64_t perImage = std::max<int64_t>(1, N * std::max<int64_t>(M, 1));
  const int64_t chunk = std::max<int64_t>(1, opts.maxPairs / perImage);
  if (chunk >= B) return assignChunk(logits.detach(), priors, decoded.detach(), annotations, opts);
  std::vector<DslAssignment> parts;
  for (int64_t b = 0; b < B; b += chunk) {
    const int64_t n = std::min(chunk, B - b);
    parts.push_back(assignChunk(logits.detach().narrow(0, b, n), priors, decoded.detach().narrow(0, b, n), annotations.narrow(0, b, n), opts));
  }
  auto cat = [&parts](torch::Tensor DslAssignment::*field) {
    std::vector<torch::Tensor> v;
    for (auto& p : parts) v.push_back(p.*field);
    return torch::cat(v, 0);
  };
  return {cat(&DslAssignment::gtIndex), cat(&DslAssignment::labels), cat(&DslAssignment::ious), cat(&DslAssignment::ignored),
          cat(&DslAssignment::numPositives)};
}

}  // namespace onestage
