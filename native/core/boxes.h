// Box geometry. Boxes are x1,y1,x2,y2 in pixels of the network input, no +1 (DESIGN.md).
#pragma once
#include <torch/torch.h>

#include <array>

namespace onestage {

/// Delta encoding of boxes against anchors (R-CNN parameterisation), as pytorch-retinanet's
/// BBoxTransform / FocalLoss: deltas (dx, dy, dw, dh) = ((cx−acx)/aw, (cy−acy)/ah, log(w/aw), log(h/ah)),
/// then (delta − mean) / std. Default std [0.1, 0.1, 0.2, 0.2]; std 1 for torchvision/mmdet parity.
struct BoxCoder {
  std::array<double, 4> mean{0, 0, 0, 0};
  std::array<double, 4> std{0.1, 0.1, 0.2, 0.2};
  /// Ground-truth widths/heights are clamped to at least this before log (pytorch-retinanet: 1;
  /// centres use the unclamped size, as there). 0 disables.
  double minTargetSize = 1.0;
  /// dw, dh are clamped to at most this before exp (torchvision: log(1000/16)); ≤ 0 disables
  /// (pytorch-retinanet does not clamp).
  double maxDeltaExp = 0.0;

  /// anchors [..., 4], boxes [..., 4] (broadcastable) → deltas [..., 4].
  torch::Tensor encode(const torch::Tensor& anchors, const torch::Tensor& boxes) const;
  /// anchors [..., 4], deltas [..., 4] (broadcastable) → boxes [..., 4].
  torch::Tensor decode(const torch::Tensor& anchors, const torch::Tensor& deltas) const;
};

/// Clamps boxes [..., 4] to 0 ≤ x ≤ width, 0 ≤ y ≤ height.
torch::Tensor clipBoxes(const torch::Tensor& boxes, double height, double width);
/// Clamps boxes [B, N, 4] per image: limits [B, 2] (height, width) float.
torch::Tensor clipBoxesPerImage(const torch::Tensor& boxes, const torch::Tensor& limits);

/// Areas of boxes [..., 4] (negative sizes count as 0).
torch::Tensor boxArea(const torch::Tensor& boxes);

/// Pairwise IoU: a [..., N, 4], b [..., M, 4] → [..., N, M]. Empty boxes give IoU 0 (never NaN).
torch::Tensor boxIou(const torch::Tensor& a, const torch::Tensor& b);

/// Checks a boxes tensor: floating, last dim 4. Throws TypeError/RangeError naming `what`.
void checkBoxes(const torch::Tensor& boxes, const char* what);


/// Boxes from distances to the four sides (NanoDet's distance2bbox): points [..., 2] (x, y),
/// distances [..., 4] (left, top, right, bottom) → [..., 4] x1, y1, x2, y2; with limits
/// (height, width) > 0 the coordinates are clamped to [0, width] × [0, height].
torch::Tensor distanceToBox(const torch::Tensor& points, const torch::Tensor& distances, double height = 0, double width = 0);

/// The inverse (NanoDet's bbox2distance, no clamping): points [..., 2], boxes [..., 4] → [..., 4].
torch::Tensor boxToDistance(const torch::Tensor& points, const torch::Tensor& boxes);

}  // namespace onestage
