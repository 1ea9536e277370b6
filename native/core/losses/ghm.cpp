#include "core/losses/ghm.h"

#include <ATen/Parallel.h>

#include <mutex>
#include <vector>

#include "core/errors.h"
#include "core/tensor_types.h"

namespace onestage {

void GhmState::ensure(int64_t bins, const torch::Device& device) {
  if (!accSum.defined() || accSum.size(0) != bins)
    accSum = torch::zeros({bins}, torch::TensorOptions().dtype(torch::kFloat64).device(device));
  else if (accSum.device() != device)
    accSum = accSum.to(device);
}

namespace {

void checkGhmInputs(const torch::Tensor& pred, const torch::Tensor& target, const torch::Tensor& w, const GhmOptions& o,
                    const char* what) {
  if (!pred.is_floating_point()) throw TypeError(std::string(what) + ": pred must be a float tensor");
  if (target.sizes() != pred.sizes() || w.sizes() != pred.sizes())
    throw RangeError(std::string(what) + ": pred " + describeShape(pred.sizes()) + ", target " + describeShape(target.sizes()) +
                     " and labelWeight " + describeShape(w.sizes()) + " must have one shape");
  if (target.device() != pred.device() || w.device() != pred.device())
    throw TypeError(std::string(what) + ": pred, target and labelWeight must be on one device");
  if (o.bins < 1 || o.bins > 100000) throw RangeError(std::string(what) + ": bins must be between 1 and 100000");
  if (o.momentum < 0 || o.momentum >= 1) throw RangeError(std::string(what) + ": momentum must be in [0, 1)");
}

/// Bin of every element (edges[i] ≤ g < edges[i+1]; `bins` when invalid, NaN or past the last edge)
/// and the float64 count of valid elements per bin.
std::pair<torch::Tensor, torch::Tensor> binsAndCounts(const torch::Tensor& g, const torch::Tensor& valid,
                                                      const torch::Tensor& edges, int64_t bins) {
  if (g.is_cpu() && g.scalar_type() == torch::kFloat32) {
    // one fused pass: start from floor(g·bins) and move to the exact float32 edge interval
    const auto gc = g.contiguous().view({-1});
    const auto vc = valid.contiguous().view({-1});
    const auto ec = edges.contiguous();
    const float* gp = gc.data_ptr<float>();
    const bool* vp = vc.data_ptr<bool>();
    const float* e = ec.data_ptr<float>();
    const int64_t n = gc.numel();
    auto bin = torch::empty({n}, torch::kInt64);
    int64_t* bp = bin.data_ptr<int64_t>();
    std::vector<int64_t> counts(static_cast<size_t>(bins) + 1, 0);
    std::mutex merge;
    at::parallel_for(0, n, 1 << 16, [&](int64_t begin, int64_t end) {
      std::vector<int64_t> local(static_cast<size_t>(bins) + 1, 0);
      for (int64_t i = begin; i < end; ++i) {
        const float v = gp[i];
        int64_t b = bins;
        if (vp[i] && v == v && v >= e[0] && v < e[bins]) {
          const float scaled = v * static_cast<float>(bins);
          b = scaled >= static_cast<float>(bins) ? bins - 1 : static_cast<int64_t>(scaled);
          while (b > 0 && v < e[b]) --b;
          while (b < bins - 1 && v >= e[b + 1]) ++b;
        }
        bp[i] = b;
        ++local[static_cast<size_t>(b)];
      }
      std::lock_guard<std::mutex> lock(merge);
      for (size_t k = 0; k < local.size(); ++k) counts[k] += local[k];
    });
    auto c = torch::empty({bins}, torch::kFloat64);
    for (int64_t k = 0; k < bins; ++k) c[k] = static_cast<double>(counts[static_cast<size_t>(k)]);
    return {bin, c};
  }
  // generic (CUDA): bucketize, then a histogram of the integer bin ids (histc's shared-memory kernel;
  // scatter_add's atomics on a dozen addresses serialise), float64 so counts stay exact past 2^24;
  // no host sync
  auto bin = torch::bucketize(g, edges, /*out_int32=*/false, /*right=*/true) - 1;
  const auto inBin = valid & (bin >= 0) & (bin < bins);
  bin = torch::where(inBin, bin, torch::full_like(bin, bins)).reshape({-1});
  const auto counts = torch::histc(bin.to(torch::kFloat64), bins + 1, 0, static_cast<double>(bins + 1)).narrow(0, 0, bins);
  return {bin, counts};
}

/// Per-element harmonising weights for gradient norms g (detached), valid mask, total `tot`.
torch::Tensor ghmWeights(const torch::Tensor& g, const torch::Tensor& valid, const torch::Tensor& tot, const GhmOptions& o,
                         double lastEdge, bool addToLast, GhmState& state) {
  const auto f32 = g.options();
  auto edges = torch::arange(o.bins + 1, f32) / static_cast<double>(o.bins);
  if (addToLast) edges[o.bins] += lastEdge;
  else edges[o.bins] = lastEdge;
  const auto [bin, counts] = binsAndCounts(g, valid, edges, o.bins);
  const auto nonEmpty = counts > 0;
  torch::Tensor denom = counts;
  if (o.momentum > 0) {
    state.ensure(o.bins, g.device());
    state.accSum = torch::where(nonEmpty, o.momentum * state.accSum + (1 - o.momentum) * counts, state.accSum);
    denom = state.accSum;
  }
  const auto n = nonEmpty.sum().to(f32.dtype()).clamp_min(1.0);
  const auto perBin = torch::where(nonEmpty, tot / denom.clamp_min(1e-300), torch::zeros_like(denom)).to(f32.dtype());
  // weight of bin i = perBin_i / n (the authors divide the float32 weights by the bin count n)
  const auto table = torch::cat({perBin, torch::zeros({1}, f32)}) / n;
  return table.index_select(0, bin).view(g.sizes());
}

}  // namespace

torch::Tensor ghmcLoss(const torch::Tensor& pred, const torch::Tensor& targetIn, const torch::Tensor& labelWeight,
                       const GhmOptions& o, GhmState& state) {
  checkGhmInputs(pred, targetIn, labelWeight, o, "GHMC");
  const auto target = targetIn.to(pred.scalar_type());
  torch::Tensor weights, tot;
  {
    torch::NoGradGuard noGrad;
    const auto g = torch::abs(torch::sigmoid(pred.detach()) - target);
    const auto valid = labelWeight > 0;
    tot = valid.sum().to(torch::kFloat64).clamp_min(1.0);
    weights = ghmWeights(g, valid, tot, o, 1e-6, true, state);
  }
  const auto loss = torch::binary_cross_entropy_with_logits(pred, target, weights, {}, at::Reduction::Sum);
  return loss / tot.to(pred.scalar_type()) * o.lossWeight;
}

torch::Tensor ghmrLoss(const torch::Tensor& pred, const torch::Tensor& targetIn, const torch::Tensor& labelWeight,
                       const GhmOptions& o, GhmState& state) {
  checkGhmInputs(pred, targetIn, labelWeight, o, "GHMR");
  const auto target = targetIn.to(pred.scalar_type());
  const double mu2 = o.mu * o.mu;
  const auto diff = pred - target;
  const auto loss = torch::sqrt(diff * diff + mu2) - o.mu;
  torch::Tensor weights, tot;
  {
    torch::NoGradGuard noGrad;
    const auto d = diff.detach();
    const auto g = torch::abs(d / torch::sqrt(mu2 + d * d));
    const auto valid = labelWeight > 0;
    tot = labelWeight.sum().to(torch::kFloat64).clamp_min(1.0);
    weights = ghmWeights(g, valid, tot, o, 1e3, false, state);
  }
  return (loss * weights).sum() / tot.to(pred.scalar_type()) * o.lossWeight;
}

}  // namespace onestage
