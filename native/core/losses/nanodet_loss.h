// The NanoDet-Plus loss (DESIGN.md), batched — no per-image loop, no host synchronisation:
// DSL assignment (by the AGM's auxiliary predictions when given), then for each head
//   QFL  = qflWeight · Σ QFL·labelWeight / max(N_pos, 1),
//   GIoU = bboxWeight · Σ (1 − GIoU)·w / max(Σ w, 1),
//   DFL  = dflWeight · Σ DFL·w / (4·max(Σ w, 1)),
// with w the positive's highest predicted class probability (detached). Under data parallelism the
// normalisers N_pos and Σ w are the means over the workers (`MeanReducer`), as NanoDet's reduce_mean
// intends (its own silently does nothing when torch.distributed is not initialised).
#pragma once
#include <torch/torch.h>

#include "core/losses/reduce.h"

#include <functional>
#include <string>

#include "core/assign/dsl.h"

namespace onestage {

struct NanoDetLossOptions {
  double qflBeta = 2.0;
  double qflWeight = 1.0;
  double bboxWeight = 2.0;
  double dflWeight = 0.25;
  DslAssignerOptions assigner;
  /// From this epoch on the AGM's inputs are detached (NanoDet-Plus: 10).
  int64_t detachEpoch = 10;
  /// "aux" (NanoDet-Plus' code, default): the auxiliary head assigns for the whole of training;
  /// "aux-until-detach" (the note's reading): from detachEpoch on the main head assigns its own labels.
  std::string assignBy = "aux";
};

/// Mean of a scalar over data-parallel workers (identity in a single process).

/// Per-prior training targets from an assignment.
struct NanoDetTargets {
  torch::Tensor labels;     // [B, N] int64 class of positives, numClasses elsewhere (background)
  torch::Tensor scores;     // [B, N] float32 IoU target of positives, 0 elsewhere
  torch::Tensor weights;    // [B, N] float32 classification weight: 0 for ignored priors, else 1
  torch::Tensor boxes;      // [B, N, 4] GT box of positives, 0 elsewhere
  torch::Tensor distances;  // [B, N, 4] GT distances ÷ stride clamped to [0, regMax − 0.1], 0 elsewhere
  torch::Tensor positive;   // [B, N] bool
  torch::Tensor numPositives;  // scalar float32 (this worker)
};

NanoDetTargets nanodetTargets(const DslAssignment& assignment, const torch::Tensor& priors, const torch::Tensor& annotations,
                              int64_t numClasses, int64_t regMax);

struct NanoDetHeadLoss {
  torch::Tensor qfl, bbox, dfl;  // scalars with autograd
};

/// One head's loss: preds [B, N, C + 4·(regMax+1)] (float32), priors [N, 4].
NanoDetHeadLoss nanodetHeadLoss(const torch::Tensor& preds, const torch::Tensor& priors, const NanoDetTargets& targets,
                                int64_t numClasses, int64_t regMax, const NanoDetLossOptions& opts, const MeanReducer& reduce = {});

struct NanoDetLossParts {
  NanoDetHeadLoss main, aux;  // aux undefined without auxiliary predictions
  torch::Tensor numPositives;  // [B] int64
  torch::Tensor total() const;
};

/// The full loss. preds and auxPreds (may be undefined) [B, N, C + 4·(regMax+1)], priors [N, 4],
/// annotations [B, M, 5]; assignWithMain: assign by the main head even when auxPreds is given.
NanoDetLossParts nanodetPlusLoss(const torch::Tensor& preds, const torch::Tensor& auxPreds, const torch::Tensor& priors,
                                 const torch::Tensor& annotations, int64_t numClasses, int64_t regMax, const NanoDetLossOptions& opts,
                                 bool assignWithMain = false, const MeanReducer& reduce = {});

/// Boxes decoded from predictions: preds [B, N, C + 4·(regMax+1)], priors [N, 4] → [B, N, 4].
torch::Tensor decodeDistributionBoxes(const torch::Tensor& preds, const torch::Tensor& priors, int64_t numClasses, int64_t regMax);

}  // namespace onestage
