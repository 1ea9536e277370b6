// Gradient Harmonized losses (Li, Liu, Wang, AAAI 2019) with the GHM authors' / mmdetection's
// semantics, vectorised: the gradient-norm histogram is one bucketize + scatter_add on the device,
// no per-bin loop and no host synchronisation.
//   edges i/bins (GHM-C: last + 1e-6; GHM-R: last = 1e3); tot = number of valid elements (C) or
//   the label-weight sum (R), at least 1; weight of an element in bin i = tot / count_i (or
//   tot / acc_i with momentum: acc_i = m·acc_i + (1−m)·count_i for non-empty bins, acc starting at 0),
//   divided by the number of non-empty bins; loss = Σ weight·loss / tot · lossWeight.
// The momentum state is kept in float64, as the authors' code keeps it in Python floats.
#pragma once
#include <torch/torch.h>

#include "core/losses/reduce.h"

namespace onestage {

struct GhmOptions {
  int64_t bins = 10;
  double momentum = 0.0;
  double lossWeight = 1.0;
  double mu = 0.02;  // GHM-R only: authentic smooth L1 sqrt(d² + μ²) − μ
};

/// Holds the EMA of the bin counts (acc_sum), float64 [bins] on the loss's device.
struct GhmState {
  torch::Tensor accSum;
  /// Data-parallel: the bin counts and the element total become means over the ranks (the global
  /// histogram; the same EMA on every rank). Not saved.
  MeanReducer mean;
  /// The bin edges of the fused CUDA paths, built once per bin count and device.
  torch::Tensor edges;
  void ensure(int64_t bins, const torch::Device& device);
};

/// GHM-C: pred [..., C] logits, target same shape (0/1), labelWeight same shape (> 0 valid).
torch::Tensor ghmcLoss(const torch::Tensor& pred, const torch::Tensor& target, const torch::Tensor& labelWeight,
                       const GhmOptions& opts, GhmState& state);

/// GHM-C in mmdetection's labels form, fused: pred [R, C] logits, labels [R] int64 (class index;
/// anything else, e.g. −1, is background), labelWeight [R] (> 0: all C elements of the row count).
/// Equal to ghmcLoss on the one-hot expansion. On CUDA fused: one read-only pass forward (per-bin
/// counts and term sums; bins ≤ 32, else a histogram pass and a terms pass, ≤ 1024), one backward that
/// recomputes the gradient from the logits, no [R, C] temporaries; on CPU the expansion is used.
torch::Tensor ghmcLossLabels(const torch::Tensor& pred, const torch::Tensor& labels, const torch::Tensor& labelWeight,
                             const GhmOptions& opts, GhmState& state);

#ifdef ONESTAGE_WITH_CUDA
/// Most bins of the one-pass GHM-C forward (ghmcStatsCuda); more bins take two passes.
constexpr int kGhmcStatsMaxBins = 32;

/// One read of the logits (ghm_cuda.cu): per bin the count and the sum of the BCE terms of its valid
/// elements, and the number of valid elements; float64 [bins], [bins], [1], deterministic.
struct GhmcStats {
  torch::Tensor counts, sums, validTotal;
};
GhmcStats ghmcStatsCuda(const torch::Tensor& x, const torch::Tensor& labels, const torch::Tensor& valid, const torch::Tensor& edges,
                        int64_t bins);

/// From (global) counts, the per-bin term sums and the (global, unclamped) total: the weight table
/// (float32 [bins], EMA updated in place when momentum > 0), tot = max(total, 1) (float32 scalar) and
/// loss = lossWeight · Σ table·sums / tot (float32 scalar). One kernel.
struct GhmcFinish {
  torch::Tensor loss, table, tot;
};
GhmcFinish ghmcFinishCuda(const torch::Tensor& counts, const torch::Tensor& sums, const torch::Tensor& tot, const torch::Tensor& accSum,
                          double momentum, double lossWeight);

/// The two-pass parts (more than kGhmcStatsMaxBins bins). counts: float64 [bins]; terms: the sum of
/// the weighted BCE terms (scalar). grad (every bin count): w · (σ(x) − t) · upstream · lossWeight / tot
/// per element, recomputed from the logits in the backward.
torch::Tensor ghmcCountsCuda(const torch::Tensor& x, const torch::Tensor& labels, const torch::Tensor& valid,
                             const torch::Tensor& edges, int64_t bins);
torch::Tensor ghmcTermsCuda(const torch::Tensor& x, const torch::Tensor& labels, const torch::Tensor& valid, const torch::Tensor& edges,
                            const torch::Tensor& table, int64_t bins);
torch::Tensor ghmcGradCuda(const torch::Tensor& x, const torch::Tensor& labels, const torch::Tensor& valid, const torch::Tensor& edges,
                           const torch::Tensor& table, int64_t bins, const torch::Tensor& upstream, const torch::Tensor& tot, double lossWeight);
/// CUDA halves of the fused GHM-R (float32 contiguous pred, target, weight of one shape).
torch::Tensor ghmrCountsCuda(const torch::Tensor& pred, const torch::Tensor& target, const torch::Tensor& weight, double mu,
                             const torch::Tensor& edges, int64_t bins);
std::pair<torch::Tensor, torch::Tensor> ghmrTermsCuda(const torch::Tensor& pred, const torch::Tensor& target, const torch::Tensor& weight,
                                                      double mu, const torch::Tensor& edges, const torch::Tensor& table, int64_t bins,
                                                      bool withGrad);
/// The bin weight table (float32 [bins], ≤ 1024 bins) from float64 counts and total, updating accSum
/// in place when momentum > 0: one kernel.
torch::Tensor ghmTableCuda(const torch::Tensor& counts, const torch::Tensor& tot, const torch::Tensor& accSum, double momentum);
#endif

/// GHM-R: pred [..., 4], target same shape (encoded deltas, no gradient), labelWeight same shape.
/// Fused on CUDA (three kernels), LibTorch ops on CPU.
torch::Tensor ghmrLoss(const torch::Tensor& pred, const torch::Tensor& target, const torch::Tensor& labelWeight,
                       const GhmOptions& opts, GhmState& state);

}  // namespace onestage
