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
  void ensure(int64_t bins, const torch::Device& device);
};

/// GHM-C: pred [..., C] logits, target same shape (0/1), labelWeight same shape (> 0 valid).
torch::Tensor ghmcLoss(const torch::Tensor& pred, const torch::Tensor& target, const torch::Tensor& labelWeight,
                       const GhmOptions& opts, GhmState& state);

/// GHM-R: pred [..., 4], target same shape (encoded deltas), labelWeight same shape.
torch::Tensor ghmrLoss(const torch::Tensor& pred, const torch::Tensor& target, const torch::Tensor& labelWeight,
                       const GhmOptions& opts, GhmState& state);

}  // namespace onestage
