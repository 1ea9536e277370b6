// Max-IoU anchor assignment for a whole batch at once (no per-image loop, no host sync).
// Annotations [B, M, 5] rows are (x1, y1, x2, y2, label): label ≥ 0 a ground-truth box of that
// class, −1 a padding row (as the collater pads), ≤ −2 an ignore region (COCO crowd).
#pragma once
#include <torch/torch.h>

namespace onestage {

struct MaxIoUAssignerOptions {
  double positiveIou = 0.5;  // IoU ≥ this: positive
  double negativeIou = 0.4;  // IoU < this: negative; in between: ignored
  /// mmdetection's low-quality matches: every anchor that ties a GT's best IoU (≥ minPositiveIou,
  /// and > 0) is assigned to that GT, the later GT winning ties.
  bool lowQualityMatches = false;
  double minPositiveIou = 0.0;
  /// Anchors whose intersection with an ignore region covers more than this fraction of the anchor
  /// are ignored (never positive, never negative). ≤ 0 disables.
  double ignoreIof = 0.5;
};

/// Per-anchor assignment. Labels: class ≥ 0 positive, −1 negative (background), −2 ignored.
struct Assignment {
  torch::Tensor labels;        // [B, N] int64
  torch::Tensor assignedGt;    // [B, N] int64 row of annotations, −1 where not positive
  torch::Tensor boxes;         // [B, N, 4] assigned GT box (the anchor itself where not positive)
  torch::Tensor maxIou;        // [B, N] best IoU with a real GT (−1 when the image has none)
  torch::Tensor numPositives;  // [B] int64
};

/// IoU as pytorch-retinanet's calc_iou: a [N, 4] anchors, b [B, M, 4] → [B, N, M]; union clamped to 1e-8.
torch::Tensor anchorGtIou(const torch::Tensor& anchors, const torch::Tensor& gt);

/// anchors [N, 4], annotations [B, M, 5] → assignment. No gradient flows through it.
Assignment assignMaxIou(const torch::Tensor& anchors, const torch::Tensor& annotations, const MaxIoUAssignerOptions& opts);

/// Checks anchors [N, 4] and annotations [B, M, 5] (floating, same device); errors name them.
void checkAnchorsAndAnnotations(const torch::Tensor& anchors, const torch::Tensor& annotations);

}  // namespace onestage
