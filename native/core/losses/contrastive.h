// The per-object contrastive loss between two views (NT-Xent, SimCLR) on FPN features: each real
// ground-truth box is pooled (RoIAlign, box scaled by the level's stride) from every chosen level of
// both views into an L2-normalised embedding; one masked similarity matrix over all embeddings of
// the batch gives, for every embedding, the same box in the other view as its positive and, by
// mode, its negatives — always within the same pyramid level (levels are not comparable spaces).
#pragma once
#include <torch/torch.h>

#include <functional>
#include <string>
#include <vector>

namespace onestage {

struct ContrastiveLossOptions {
  double temperature = 0.5;
  /// "all": every level for every box (the note's design); "assigned": one level per box, FPN's rule
  /// k = ⌊4 + log2(√(wh) / 224)⌋ clamped to the available levels.
  std::string levels = "all";
  /// "other-class": boxes of another class anywhere in the batch (same-class boxes are left out of
  /// the denominator); "all-other": every other box (SimCLR); "same-region-other-images": the box in
  /// the same annotation row of the other images (the prototype's definition).
  std::string negatives = "other-class";
  /// "average": the mean over the RoIAlign bins (C values); "flatten": all bins (C·h·w values).
  std::string pooling = "average";
  int64_t outputSize = 7;
  int64_t samplingRatio = 2;
  /// Pyramid level of the first feature map (P3 → 3); strides are 2^level unless given.
  int64_t firstLevel = 3;
  std::vector<double> strides;  // empty: 2^(firstLevel + i)
  /// Background cells: the image is cut into grid × grid cells; the cell least covered by boxes
  /// (largest part outside every box; the first in row-major order on ties) is an image's background
  /// region, a negative for any embedding that would otherwise have none.
  int64_t backgroundGrid = 4;
};

struct ContrastiveParts {
  torch::Tensor loss;  // scalar
  /// Anchors in the loss (2 · boxes · levels) and, of them, those whose negatives are background
  /// regions: int64 scalar tensors, left on the device (reading them is a host synchronisation the
  /// training step does not need).
  torch::Tensor embeddings, withBackground;
};

/// Maps pooled region features [R, D] to the embedding space before normalisation (e.g. SimCLR's
/// projection head); empty: identity.
using Projection = std::function<torch::Tensor(const torch::Tensor&)>;

/// features1, features2: the FPN maps [B, C, H_l, W_l] of the two views (same shapes), annotations
/// [B, M, 5] in input pixels (label ≥ 0 boxes; padding −1 and crowd/ignore ≤ −2 rows are left out),
/// inputSize {height, width} of the network input. Without boxes the loss is 0 with a gradient path.
ContrastiveParts contrastiveLoss(const std::vector<torch::Tensor>& features1, const std::vector<torch::Tensor>& features2,
                                 const torch::Tensor& annotations, int64_t inputHeight, int64_t inputWidth,
                                 const ContrastiveLossOptions& options, const Projection& project = {});

}  // namespace onestage
