// Generalized Focal Loss pieces of NanoDet-Plus, as NanoDet's gfocal_loss.py and gfl_head.py:
// the Integral of a discrete distance distribution, Quality Focal Loss and Distribution Focal Loss,
// per sample (reduction 'none'), with autograd. Reductions are the caller's (NanoDet's
// weighted_loss: Σ loss·weight / avg_factor).
#pragma once
#include <torch/torch.h>

namespace onestage {

/// GFL's Integral: reg [..., 4·(regMax+1)] logits → [..., 4] expected distances in bins:
/// softmax over each side's regMax+1 bins, dotted with 0, 1, …, regMax.
torch::Tensor integralDistances(const torch::Tensor& reg, int64_t regMax);

/// QFL per sample: pred [N, C] logits, label [N] int64 (0…C−1 a positive of that class, anything
/// else background), score [N] float (IoU target of positives) → [N] float:
/// Σ_c BCE(pred, 0)·σ^β on negatives, BCE(pred, score)·|score − σ|^β at the positive's class.
torch::Tensor qualityFocalLoss(const torch::Tensor& pred, const torch::Tensor& label, const torch::Tensor& score, double beta = 2.0);

/// DFL per sample: pred [N, regMax+1] logits, label [N] float in [0, regMax) →
/// CE(pred, ⌊y⌋)·(⌊y⌋+1−y) + CE(pred, ⌊y⌋+1)·(y−⌊y⌋), [N].
torch::Tensor distributionFocalLoss(const torch::Tensor& pred, const torch::Tensor& label);

}  // namespace onestage
