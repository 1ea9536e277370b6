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

/// The element total `tot` (at least 1): under data parallelism with the reducer, the mean over the ranks.
torch::Tensor globalTotal(const torch::Tensor& local, const GhmState& state) {
  return (state.mean ? state.mean(local) : local).clamp_min(1.0);
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

torch::Tensor ghmEdges(int64_t bins, double extra, bool addToLast, const torch::TensorOptions& f32) {
  auto edges = torch::arange(bins + 1, f32) / static_cast<double>(bins);
  if (addToLast) edges[bins] += extra;
  else edges[bins] = extra;
  return edges;
}

/// The per-bin weight table [bins] (float32, already divided by the non-empty bin count), updating the EMA.
torch::Tensor ghmTable(const torch::Tensor& localCounts, const torch::Tensor& tot, const GhmOptions& o, GhmState& state,
                       const torch::TensorOptions& f32) {
  const auto counts = state.mean ? state.mean(localCounts) : localCounts;
  const auto nonEmpty = counts > 0;
  torch::Tensor denom = counts;
  if (o.momentum > 0) {
    state.ensure(o.bins, counts.device());
    state.accSum = torch::where(nonEmpty, o.momentum * state.accSum + (1 - o.momentum) * counts, state.accSum);
    denom = state.accSum;
  }
  const auto n = nonEmpty.sum().to(f32.dtype()).clamp_min(1.0);
  return torch::where(nonEmpty, tot / denom.clamp_min(1e-300), torch::zeros_like(denom)).to(f32.dtype()) / n;
}

/// Per-element harmonising weights for gradient norms g (detached), valid mask, total `tot`.
torch::Tensor ghmWeights(const torch::Tensor& g, const torch::Tensor& valid, const torch::Tensor& tot, const GhmOptions& o,
                         double lastEdge, bool addToLast, GhmState& state) {
  const auto edges = ghmEdges(o.bins, lastEdge, addToLast, g.options());
  const auto [bin, counts] = binsAndCounts(g, valid, edges, o.bins);
  const auto table = ghmTable(counts, tot, o, state, g.options());
  return torch::cat({table, torch::zeros({1}, g.options())}).index_select(0, bin).view(g.sizes());
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
    tot = globalTotal(valid.sum().to(torch::kFloat64), state);
    weights = ghmWeights(g, valid, tot, o, 1e-6, true, state);
  }
  const auto loss = torch::binary_cross_entropy_with_logits(pred, target, weights, {}, at::Reduction::Sum);
  return loss / tot.to(pred.scalar_type()) * o.lossWeight;
}

namespace {

#ifdef ONESTAGE_WITH_CUDA
/// The fused GHM-R on CUDA. The forward kernel sums the weighted terms and writes the gradient
/// without the upstream factor (when one is needed); the backward multiplies it by
/// upstream · lossWeight / tot. run(withGrad) → {sum of terms, gradient or undefined}.
class GhmFusedFunction : public torch::autograd::Function<GhmFusedFunction> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& input, const torch::Tensor& tot, double lossWeight,
                               const std::function<std::pair<torch::Tensor, torch::Tensor>(bool)>& run) {
    auto [sum, grad] = run(input.requires_grad());
    ctx->save_for_backward({grad, tot});
    ctx->saved_data["lossWeight"] = lossWeight;
    return sum / tot * lossWeight;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::variable_list grads) {
    const auto s = ctx->get_saved_variables();
    const auto scale = grads[0] * ctx->saved_data["lossWeight"].toDouble() / s[1];
    return {s[0] * scale, torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

/// The fused GHM-C (labels form) on CUDA: run() computes {loss (lossWeight included), table, tot}
/// without autograd; the backward recomputes w · (σ(x) − t) from the logits with the upstream factor
/// folded in — one pass that reads the logits and writes the gradient.
class GhmcFusedFunction : public torch::autograd::Function<GhmcFusedFunction> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& labels, const torch::Tensor& valid,
                               const torch::Tensor& edges, int64_t bins, double lossWeight, const std::function<GhmcFinish()>& run) {
    auto result = run();
    ctx->save_for_backward({x, labels, valid, edges, result.table, result.tot});
    ctx->saved_data["bins"] = bins;
    ctx->saved_data["lossWeight"] = lossWeight;
    return result.loss;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::variable_list grads) {
    torch::autograd::variable_list out(7);
    if (!grads[0].defined()) return out;
    const auto s = ctx->get_saved_variables();
    out[0] = ghmcGradCuda(s[0], s[1], s[2], s[3], s[4], ctx->saved_data["bins"].toInt(), grads[0], s[5], ctx->saved_data["lossWeight"].toDouble());
    return out;
  }
};

/// The bin edges of a fused CUDA GHM loss, built once per bin count and device.
const torch::Tensor& cachedEdges(GhmState& state, int64_t bins, double lastEdge, bool addToLast, const torch::TensorOptions& like) {
  const auto f32 = like.dtype(torch::kFloat32);
  if (!state.edges.defined() || state.edges.size(0) != bins + 1 || state.edges.device() != f32.device())
    state.edges = ghmEdges(bins, lastEdge, addToLast, f32);
  return state.edges;
}

/// Edges, total and weight table of a fused CUDA GHM loss (no autograd), the EMA updated.
struct FusedGhmSetup {
  torch::Tensor edges, tot, table;
};

FusedGhmSetup fusedSetup(const torch::Tensor& localTotal, double lastEdge, bool addToLast, const GhmOptions& o, GhmState& state,
                         const std::function<torch::Tensor(const torch::Tensor& edges)>& counts) {
  torch::NoGradGuard noGrad;
  FusedGhmSetup s;
  s.edges = cachedEdges(state, o.bins, lastEdge, addToLast, localTotal.options());
  s.tot = globalTotal(localTotal, state);
  auto c = counts(s.edges);
  if (state.mean) c = state.mean(c);
  if (o.momentum > 0) state.ensure(o.bins, c.device());
  s.table = ghmTableCuda(c, s.tot, state.accSum, o.momentum);
  s.tot = s.tot.to(torch::kFloat32);
  return s;
}
#endif

}  // namespace

torch::Tensor ghmcLossLabels(const torch::Tensor& pred, const torch::Tensor& labelsIn, const torch::Tensor& labelWeight,
                             const GhmOptions& o, GhmState& state) {
  if (!pred.is_floating_point() || pred.dim() < 1) throw TypeError("GHMC: pred must be a float tensor [..., C]");
  const auto rowShape = pred.sizes().slice(0, pred.dim() - 1);
  if (labelsIn.sizes() != rowShape || labelWeight.sizes() != rowShape)
    throw RangeError("GHMC: labels " + describeShape(labelsIn.sizes()) + " and labelWeight " + describeShape(labelWeight.sizes()) +
                     " must have pred's shape without its last dimension " + describeShape(rowShape));
  if (labelsIn.is_floating_point() || labelsIn.scalar_type() == torch::kBool) throw TypeError("GHMC: labels must be integers");
  if (labelsIn.device() != pred.device() || labelWeight.device() != pred.device())
    throw TypeError("GHMC: pred, labels and labelWeight must be on one device");
  if (o.bins < 1 || o.bins > 100000) throw RangeError("GHMC: bins must be between 1 and 100000");
  const int64_t C = pred.size(-1);
#ifdef ONESTAGE_WITH_CUDA
  if (pred.is_cuda() && pred.scalar_type() == torch::kFloat32 && o.bins <= 1024) {
    const auto x = pred.reshape({-1, C}).contiguous();
    const auto labels = labelsIn.to(torch::kInt64).reshape({-1}).contiguous();
    const auto valid = (labelWeight > 0).reshape({-1}).contiguous();
    if (o.bins <= kGhmcStatsMaxBins) {
      // one pass: per-bin counts and term sums; the table and the loss from them in one kernel
      const auto& edges = cachedEdges(state, o.bins, 1e-6, true, x.options());
      return GhmcFusedFunction::apply(x, labels, valid, edges, o.bins, o.lossWeight, [&] {
        auto stats = ghmcStatsCuda(x.detach(), labels, valid, edges, o.bins);
        if (state.mean) {
          stats.counts = state.mean(stats.counts);
          stats.validTotal = state.mean(stats.validTotal);
        }
        if (o.momentum > 0) state.ensure(o.bins, x.device());
        return ghmcFinishCuda(stats.counts, stats.sums, stats.validTotal, state.accSum, o.momentum, o.lossWeight);
      });
    }
    const auto setup = fusedSetup(valid.sum().to(torch::kFloat64) * static_cast<double>(C), 1e-6, true, o, state,
                                  [&](const torch::Tensor& edges) { return ghmcCountsCuda(x.detach(), labels, valid, edges, o.bins); });
    return GhmcFusedFunction::apply(x, labels, valid, setup.edges, o.bins, o.lossWeight, [&] {
      return GhmcFinish{ghmcTermsCuda(x.detach(), labels, valid, setup.edges, setup.table, o.bins) / setup.tot * o.lossWeight, setup.table, setup.tot};
    });
  }
#endif
  // CPU (and other dtypes): the one-hot expansion through LibTorch's vectorised kernels is faster
  // here than a scalar fused loop
  const auto lab = labelsIn.to(torch::kInt64);
  const auto target = (lab.unsqueeze(-1) == torch::arange(C, lab.options())).to(pred.scalar_type());
  return ghmcLoss(pred, target, labelWeight.unsqueeze(-1).expand_as(pred), o, state);
}

torch::Tensor ghmrLoss(const torch::Tensor& pred, const torch::Tensor& targetIn, const torch::Tensor& labelWeight,
                       const GhmOptions& o, GhmState& state) {
  checkGhmInputs(pred, targetIn, labelWeight, o, "GHMR");
  const auto target = targetIn.to(pred.scalar_type()).detach();  // regression targets are constants
#ifdef ONESTAGE_WITH_CUDA
  if (pred.is_cuda() && pred.scalar_type() == torch::kFloat32 && o.bins <= 1024) {
    const auto p = pred.contiguous();
    const auto t = target.detach().contiguous();
    const auto w = labelWeight.detach().to(torch::kFloat32).contiguous();
    const auto setup = fusedSetup(w.sum().to(torch::kFloat64), 1e3, false, o, state,
                                  [&](const torch::Tensor& edges) { return ghmrCountsCuda(p.detach(), t, w, o.mu, edges, o.bins); });
    return GhmFusedFunction::apply(p, setup.tot, o.lossWeight, [&](bool withGrad) {
      return ghmrTermsCuda(p.detach(), t, w, o.mu, setup.edges, setup.table, o.bins, withGrad);
    });
  }
#endif
  const double mu2 = o.mu * o.mu;
  const auto diff = pred - target;
  const auto loss = torch::sqrt(diff * diff + mu2) - o.mu;
  torch::Tensor weights, tot;
  {
    torch::NoGradGuard noGrad;
    const auto d = diff.detach();
    const auto g = torch::abs(d / torch::sqrt(mu2 + d * d));
    const auto valid = labelWeight > 0;
    tot = globalTotal(labelWeight.sum().to(torch::kFloat64), state);
    weights = ghmWeights(g, valid, tot, o, 1e3, false, state);
  }
  return (loss * weights).sum() / tot.to(pred.scalar_type()) * o.lossWeight;
}

}  // namespace onestage
