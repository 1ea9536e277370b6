// RetinaNet detection losses over a whole batch: Focal loss (two variants) with max-IoU assignment
// and box regression. No per-image loop and no host synchronisation.
#pragma once
#include <torch/torch.h>

#include <string>

#include "core/assign/max_iou.h"
#include "core/boxes.h"

namespace onestage {

struct FocalLossOptions {
  /// "retinanet": pytorch-retinanet's FocalLoss exactly (probabilities clamped to [1e-4, 1−1e-4],
  ///   per-image sum / max(1, positives), smooth-L1 mean over 4·positives, mean over images).
  /// "logits": torchvision.ops.sigmoid_focal_loss on logits (stable), normalised per image or per
  ///   batch by the positives, regression summed per positive anchor and normalised the same way.
  std::string variant = "retinanet";
  double alpha = 0.25;  // < 0 disables the α factor ("logits" only)
  double gamma = 2.0;
  /// "retinanet" only: classifications are probabilities (pytorch-retinanet's model output)
  /// instead of logits.
  bool probabilities = false;
  std::string normalize = "image";      // "logits": "image" | "batch"
  std::string regression = "smoothL1";  // "smoothL1" | "l1" | "giou" | "none"
  double beta = 1.0 / 9.0;              // smooth-L1 transition
  BoxCoder coder;                       // targets: encode(anchor, gt) with std (pytorch-retinanet's)
  MaxIoUAssignerOptions assigner;
};

struct LossParts {
  torch::Tensor cls;  // scalar
  torch::Tensor reg;  // scalar
};

/// classifications [B, N, C] (logits, or probabilities with options.probabilities), regressions
/// [B, N, 4] deltas, anchors [N, 4], annotations [B, M, 5] → {cls, reg} with autograd.
LossParts focalLoss(const torch::Tensor& classifications, const torch::Tensor& regressions, const torch::Tensor& anchors,
                    const torch::Tensor& annotations, const FocalLossOptions& opts);

/// The classification and regression parts separately, from a precomputed assignment (the composer
/// shares one assignment between losses and computes only the parts it uses).
torch::Tensor focalClassification(const torch::Tensor& classifications, const Assignment& assignment, const FocalLossOptions& opts);
torch::Tensor focalRegression(const torch::Tensor& regressions, const torch::Tensor& anchors, const Assignment& assignment,
                              const FocalLossOptions& opts);

/// Both parts from a precomputed assignment.
LossParts focalLoss(const torch::Tensor& classifications, const torch::Tensor& regressions, const torch::Tensor& anchors,
                    const Assignment& assignment, const FocalLossOptions& opts);

/// pytorch-retinanet's focal classification term, fused: Σ over anchors and classes of the focal
/// term for every non-ignored anchor, per image, times scale [B] (1 / (B · max(1, positives))), summed
/// over images → a scalar with autograd. One pass forward, one pass backward (CPU loop or CUDA kernel).
/// logits [B, N, C], labels [B, N] int64 (class, −1 negative, −2 ignored).
torch::Tensor fusedRetinaFocal(const torch::Tensor& logits, const torch::Tensor& labels, const torch::Tensor& scale,
                               double alpha, double gamma, bool probabilities);

#ifdef ONESTAGE_WITH_CUDA
/// CUDA halves of fusedRetinaFocal (focal_cuda.cu): per-element loss, and the gradient.
torch::Tensor focalTermCuda(const torch::Tensor& x, const torch::Tensor& labels, double alpha, double gamma, bool probabilities);
torch::Tensor focalGradCuda(const torch::Tensor& x, const torch::Tensor& labels, const torch::Tensor& scale, double alpha,
                            double gamma, bool probabilities);
#endif

/// Elementwise sigmoid focal loss on logits (torchvision.ops.sigmoid_focal_loss, reduction none).
torch::Tensor sigmoidFocalLoss(const torch::Tensor& logits, const torch::Tensor& targets, double alpha, double gamma);

/// One-hot targets [B, N, C] float from assignment labels [B, N] (−1, −2 → all zeros).
torch::Tensor oneHotTargets(const torch::Tensor& labels, int64_t numClasses, torch::ScalarType dtype);

/// Regression loss per positive anchor, masked: returns [B] per-image sums and the matching
/// per-image element counts used by the "retinanet" mean (4·positives, or positives for GIoU).
struct RegressionSums {
  torch::Tensor sum;    // [B]
  torch::Tensor count;  // [B] float
};
RegressionSums regressionSums(const std::string& type, const torch::Tensor& regressions, const torch::Tensor& anchors,
                              const Assignment& a, const BoxCoder& coder, double beta);

void checkDetectionLossInputs(const torch::Tensor& classifications, const torch::Tensor& regressions,
                              const torch::Tensor& anchors, const torch::Tensor& annotations);

}  // namespace onestage
