#include "core/losses/ghm.h"

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

/// Per-element harmonising weights for gradient norms g (detached), valid mask, total `tot`.
torch::Tensor ghmWeights(const torch::Tensor& g, const torch::Tensor& valid, const torch::Tensor& tot, const GhmOptions& o,
                         double lastEdge, bool addToLast, GhmState& state) {
  const auto f32 = g.options();
  auto edges = torch::arange(o.bins + 1, f32) / static_cast<double>(o.bins);
  if (addToLast) edges[o.bins] += lastEdge;
  else edges[o.bins] = lastEdge;
  // bin i ⇔ edges[i] ≤ g < edges[i+1]; outside every bin (g ≥ last edge, or NaN) → index bins
  auto bin = torch::bucketize(g, edges, /*out_int32=*/false, /*right=*/true) - 1;
  const auto inBin = valid & (bin >= 0) & (bin < o.bins);
  bin = torch::where(inBin, bin, torch::full_like(bin, o.bins)).reshape({-1});
  const auto counts = torch::zeros({o.bins + 1}, f32.dtype(torch::kFloat64))
                          .scatter_add(0, bin, inBin.reshape({-1}).to(torch::kFloat64))
                          .narrow(0, 0, o.bins);
  const auto nonEmpty = counts > 0;
  torch::Tensor denom = counts;
  if (o.momentum > 0) {
    state.ensure(o.bins, g.device());
    state.accSum = torch::where(nonEmpty, o.momentum * state.accSum + (1 - o.momentum) * counts, state.accSum);
    denom = state.accSum;
  }
  const auto perBin = torch::where(nonEmpty, tot / denom.clamp_min(1e-300), torch::zeros_like(denom)).to(f32.dtype());
  const auto table = torch::cat({perBin, torch::zeros({1}, f32)});  // index bins → weight 0
  const auto weights = table.index_select(0, bin).view(g.sizes());
  const auto n = nonEmpty.sum().to(f32.dtype()).clamp_min(1.0);
  return weights / n;
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
