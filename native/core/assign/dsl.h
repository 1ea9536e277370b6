// Dynamic Soft Label assignment (NanoDet-Plus; DESIGN.md) for a whole batch at once, with
// −1-padded annotations as the collater produces. Per image: candidates are the priors whose centre
// lies strictly inside at least one real box; the cost of (prior, GT) is the soft-label BCE of the
// prior's classification logits against one-hot(GT class)·IoU, scaled by |soft − σ|², summed over
// classes, plus iouFactor·(−log(IoU + 1e-7)) (plus RTMDet's soft centre prior 10^(d/stride − r) when
// asked); each GT takes its k lowest-cost candidates with k = max(1, ⌊Σ top-13 IoU⌋); a prior taken
// by several GTs goes to its lowest-cost GT. No gradient. Images are processed in chunks so that the
// prior × GT tensors stay below `maxPairs` elements (hundreds of GTs per image fit); the class
// dimension never multiplies the pair tensors.
#pragma once
#include <torch/torch.h>

namespace onestage {

struct DslAssignerOptions {
  int64_t topk = 13;
  double iouFactor = 3.0;
  /// RTMDet / mmdetection's soft centre prior 10^(‖prior − GT centre‖/stride − radius) added to the cost.
  bool softCenterPrior = false;
  double softCenterRadius = 3.0;
  /// > 0: priors whose decoded box lies inside an ignore region (label ≤ −2) by more than this
  /// fraction of its own area are ignored (neither positive nor negative). Default off, as NanoDet.
  double ignoreIof = 0.0;
  /// Upper bound on images × priors × GTs per chunk.
  int64_t maxPairs = int64_t{1} << 24;
};

struct DslAssignment {
  torch::Tensor gtIndex;       // [B, N] int64 annotation row of each positive, −1 otherwise
  torch::Tensor labels;        // [B, N] int64 class of each positive, −1 otherwise
  torch::Tensor ious;          // [B, N] float32 IoU of the (decoded) prediction with its GT, 0 otherwise
  torch::Tensor ignored;       // [B, N] bool
  torch::Tensor numPositives;  // [B] int64
};

/// logits [B, N, C] classification logits, priors [N, 4] (cx, cy, stride, stride), decoded [B, N, 4]
/// predicted boxes, annotations [B, M, 5] → assignment.
DslAssignment assignDsl(const torch::Tensor& logits, const torch::Tensor& priors, const torch::Tensor& decoded,
                        const torch::Tensor& annotations, const DslAssignerOptions& opts = {});

/// NanoDet's bbox_overlaps (mode 'iou', eps 1e-6, union max-clamped): a [B, N, 4], b [B, M, 4] → [B, N, M].
torch::Tensor pairwiseIouNanodet(const torch::Tensor& a, const torch::Tensor& b, double eps = 1e-6);

}  // namespace onestage
