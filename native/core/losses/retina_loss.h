// The RetinaNet loss composer: classification ∈ {focal, ghmc}, regression ∈ {smoothL1, l1, giou,
// ghmr, none}, each weighted, sharing one max-IoU assignment. GHM runs once over all levels
// (default) or per pyramid level (mmdetection's call pattern: one loss module, so one EMA state
// updated once per level and step, in level order).
#pragma once
#include <torch/torch.h>

#include <mutex>
#include <string>
#include <vector>

#include "core/losses/contrastive.h"
#include "core/losses/focal.h"
#include "core/losses/ghm.h"

namespace onestage {

/// The contrastive term of joint training (computed by the training step, which has both views).
struct ContrastiveTraining {
  double weight = 0.0;  // 0: off
  ContrastiveLossOptions loss;
  /// SimCLR projection head Linear(D, hidden) → ReLU → Linear(hidden, out); hidden 0: none.
  int64_t projectionHidden = 0;
  int64_t projectionOut = 128;
  /// Also the detection losses on the second view (added to cls and reg).
  bool detectOnViews = false;
};

struct RetinaLossOptions {
  std::string classification = "focal";
  std::string regression = "smoothL1";
  double clsWeight = 1.0;
  double regWeight = 1.0;
  FocalLossOptions focal;  // variant, α, γ, normalisation, β, box coder, assigner
  GhmOptions ghmc{10, 0.75, 1.0, 0.02};
  GhmOptions ghmr{10, 0.7, 1.0, 0.02};
  bool ghmPerLevel = false;
  /// Data-parallel training: GHM's bin counts and element totals are means over the ranks (the
  /// histogram of the global batch, one EMA everywhere) instead of per rank (mmdetection under DDP).
  bool ghmAcrossRanks = false;
  ContrastiveTraining contrastive;
};

class RetinaLoss {
 public:
  explicit RetinaLoss(RetinaLossOptions options);
  /// classifications [B, N, C] logits, regressions [B, N, 4], anchors [N, 4], annotations [B, M, 5];
  /// levelSizes: anchors per pyramid level (needed for per-level GHM; Σ = N).
  LossParts forward(const torch::Tensor& classifications, const torch::Tensor& regressions, const torch::Tensor& anchors,
                    const torch::Tensor& annotations, const std::vector<int64_t>& levelSizes);

  const RetinaLossOptions& options() const { return options_; }
  /// EMA states (one each: per-level GHM shares it across the levels, as mmdetection). Saved with checkpoints.
  std::vector<GhmState>& ghmcStates() { return ghmc_; }
  std::vector<GhmState>& ghmrStates() { return ghmr_; }
  std::mutex& mutex() { return mutex_; }
  /// The reducer GHM's statistics go through when options().ghmAcrossRanks (set by the trainer).
  void setGhmReducer(MeanReducer reduce) { ghmReduce_ = std::move(reduce); }

 private:
  RetinaLossOptions options_;
  MeanReducer ghmReduce_;
  std::vector<GhmState> ghmc_, ghmr_;
  std::mutex mutex_;
};

}  // namespace onestage
