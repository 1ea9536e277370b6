#include "core/boxes.h"

#include <cmath>

#include "core/errors.h"
#include "core/tensor_types.h"

namespace onestage {

void checkBoxes(const torch::Tensor& boxes, const char* what) {
  if (!boxes.is_floating_point())
    throw TypeError(std::string(what) + ": expected a float32 or float64 tensor but received " +
                    std::string(c10::toString(boxes.scalar_type())));
  if (boxes.dim() < 1 || boxes.size(-1) != 4)
    throw RangeError(std::string(what) + ": expected shape [..., 4] but received " + describeShape(boxes.sizes()));
}

torch::Tensor BoxCoder::encode(const torch::Tensor& anchors, const torch::Tensor& boxes) const {
  const auto aw = anchors.select(-1, 2) - anchors.select(-1, 0);
  const auto ah = anchors.select(-1, 3) - anchors.select(-1, 1);
  const auto acx = anchors.select(-1, 0) + 0.5 * aw;
  const auto acy = anchors.select(-1, 1) + 0.5 * ah;
  auto w = boxes.select(-1, 2) - boxes.select(-1, 0);
  auto h = boxes.select(-1, 3) - boxes.select(-1, 1);
  const auto cx = boxes.select(-1, 0) + 0.5 * w;
  const auto cy = boxes.select(-1, 1) + 0.5 * h;
  if (minTargetSize > 0) {
    w = w.clamp_min(minTargetSize);
    h = h.clamp_min(minTargetSize);
  }
  // (delta − mean) / std per coordinate with scalars (the arithmetic of a [4] constant tensor, without
  // a host-to-device copy per call, which a CUDA graph capture would refuse)
  const auto normalise = [this](torch::Tensor v, int k) { return (mean[k] != 0 ? v - mean[k] : v) / std[k]; };
  return torch::stack({normalise((cx - acx) / aw, 0), normalise((cy - acy) / ah, 1), normalise(torch::log(w / aw), 2),
                       normalise(torch::log(h / ah), 3)},
                      -1);
}

torch::Tensor BoxCoder::decode(const torch::Tensor& anchors, const torch::Tensor& deltasIn) const {
  // delta · std + mean per coordinate (scalars: no host-to-device copy)
  const auto coordinate = [&](int k) {
    const auto v = deltasIn.select(-1, k) * std[k];
    return mean[k] != 0 ? v + mean[k] : v;
  };
  const auto aw = anchors.select(-1, 2) - anchors.select(-1, 0);
  const auto ah = anchors.select(-1, 3) - anchors.select(-1, 1);
  const auto acx = anchors.select(-1, 0) + 0.5 * aw;
  const auto acy = anchors.select(-1, 1) + 0.5 * ah;
  auto dw = coordinate(2);
  auto dh = coordinate(3);
  if (maxDeltaExp > 0) {
    dw = dw.clamp_max(maxDeltaExp);
    dh = dh.clamp_max(maxDeltaExp);
  }
  const auto cx = acx + coordinate(0) * aw;
  const auto cy = acy + coordinate(1) * ah;
  const auto w = torch::exp(dw) * aw;
  const auto h = torch::exp(dh) * ah;
  return torch::stack({cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h}, -1);
}

torch::Tensor clipBoxes(const torch::Tensor& boxes, double height, double width) {
  const auto x1 = boxes.select(-1, 0).clamp(0, width);
  const auto y1 = boxes.select(-1, 1).clamp(0, height);
  const auto x2 = boxes.select(-1, 2).clamp(0, width);
  const auto y2 = boxes.select(-1, 3).clamp(0, height);
  return torch::stack({x1, y1, x2, y2}, -1);
}

torch::Tensor clipBoxesPerImage(const torch::Tensor& boxes, const torch::Tensor& limits) {
  // limits [B, 2] (h, w) → [B, 1, 4] maxima (w, h, w, h)
  const auto lim = limits.to(boxes.scalar_type());
  const auto maxima = torch::stack({lim.select(1, 1), lim.select(1, 0), lim.select(1, 1), lim.select(1, 0)}, -1).unsqueeze(1);
  return torch::min(boxes.clamp_min(0), maxima);
}

torch::Tensor boxArea(const torch::Tensor& boxes) {
  return (boxes.select(-1, 2) - boxes.select(-1, 0)).clamp_min(0) *
         (boxes.select(-1, 3) - boxes.select(-1, 1)).clamp_min(0);
}

torch::Tensor boxIou(const torch::Tensor& a, const torch::Tensor& b) {
  const auto areaA = boxArea(a).unsqueeze(-1);  // [..., N, 1]
  const auto areaB = boxArea(b).unsqueeze(-2);  // [..., 1, M]
  const auto lt = torch::max(a.unsqueeze(-2).narrow(-1, 0, 2), b.unsqueeze(-3).narrow(-1, 0, 2));
  const auto rb = torch::min(a.unsqueeze(-2).narrow(-1, 2, 2), b.unsqueeze(-3).narrow(-1, 2, 2));
  const auto wh = (rb - lt).clamp_min(0);
  const auto inter = wh.select(-1, 0) * wh.select(-1, 1);
  const auto uni = areaA + areaB - inter;
  return torch::where(uni > 0, inter / uni.clamp_min(std::numeric_limits<float>::min()), torch::zeros_like(inter));
}


torch::Tensor distanceToBox(const torch::Tensor& points, const torch::Tensor& d, double height, double width) {
  auto x1 = points.select(-1, 0) - d.select(-1, 0);
  auto y1 = points.select(-1, 1) - d.select(-1, 1);
  auto x2 = points.select(-1, 0) + d.select(-1, 2);
  auto y2 = points.select(-1, 1) + d.select(-1, 3);
  if (height > 0 && width > 0) {
    x1 = x1.clamp(0, width);
    y1 = y1.clamp(0, height);
    x2 = x2.clamp(0, width);
    y2 = y2.clamp(0, height);
  }
  return torch::stack({x1, y1, x2, y2}, -1);
}

torch::Tensor boxToDistance(const torch::Tensor& points, const torch::Tensor& b) {
  return torch::stack({points.select(-1, 0) - b.select(-1, 0), points.select(-1, 1) - b.select(-1, 1),
                       b.select(-1, 2) - points.select(-1, 0), b.select(-1, 3) - points.select(-1, 1)},
                      -1);
}

}  // namespace onestage
