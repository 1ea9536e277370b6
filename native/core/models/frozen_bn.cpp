#include "core/models/frozen_bn.h"

#include <array>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <optional>
#include <tuple>
#include <utility>
#include <variant>

#include "core/autocast.h"
#include "core/errors.h"

#include <torch/version.h>

namespace onestage {

#ifdef ONESTAGE_WITH_CUDA
at::Tensor frozenBnForwardCuda(const at::Tensor& x, const at::Tensor& r, const at::Tensor& w, const at::Tensor& b, const at::Tensor& m,
                               const at::Tensor& v, double eps, bool relu);
std::vector<at::Tensor> frozenBnBackwardCuda(const at::Tensor& gy, const at::Tensor& gy2, const at::Tensor& y, const at::Tensor& x, const at::Tensor& w,
                                             const at::Tensor& b, const at::Tensor& m, const at::Tensor& v, double eps, bool relu, bool wantResidual);
at::Tensor biasActForwardCuda(const at::Tensor& y, const at::Tensor& bias, bool relu);
std::vector<at::Tensor> biasActBackwardCuda(const at::Tensor& gz, const at::Tensor& z, const at::Tensor& bias, bool relu);
std::vector<std::pair<at::Tensor, at::Tensor>> foldBatchNormsCuda(const std::vector<std::array<at::Tensor, 5>>& entries, const std::vector<double>& eps,
                                                                  at::ScalarType type);
#endif

namespace {

bool envIs(const char* name, const char* value) {
  const char* v = std::getenv(name);
  return v != nullptr && std::string(v) == value;
}

// read at every call (tests and benchmarks switch them between runs of one process)
/// The test hook ONESTAGE_TEST_FROZEN_BN=emulate|emulate:float64: the arithmetic type of the ATen replicas (below), or none.
std::optional<torch::ScalarType> emulationAsked() {
  const char* v = std::getenv("ONESTAGE_TEST_FROZEN_BN");
  if (v == nullptr || *v == 0) return std::nullopt;
  const std::string mode(v);
  if (mode == "emulate") return torch::kFloat32;
  if (mode == "emulate:float64") return torch::kFloat64;
  throw RangeError("ONESTAGE_TEST_FROZEN_BN must be emulate or emulate:float64, not '" + mode + "'");
}
bool pairsAllowed() { return !envIs("ONESTAGE_SHORTCUT_GRADIENTS", "autograd"); }
bool maskFromOutputAsked() { return envIs("ONESTAGE_RELU_MASK", "output"); }

// ---- the fused kernels' arithmetic in ATen operations (any device, any layout) -------------------------------------------
// What the test hook ONESTAGE_TEST_FROZEN_BN=emulate runs in place of the CUDA kernels, so that the fused path's autograd —
// two gradients of one output summed in the backward, the ReLU's mask recomputed from x — is exercised on the CPU too. Float
// arithmetic (float64 with emulate:float64: results that differ from LibTorch's BatchNorm in the last bits, which shows the
// hook at work), rounded to the storage type where the kernels round; x·s + t as a product and a sum (the kernel: one fused
// multiply-add), the same in the forward and where the backward recomputes it.
struct Affine {
  torch::Tensor scale, shift, mean, invstd;  // [1, C, 1, 1] float32
};

/// The per-channel constants in the arithmetic type `type`.
Affine affineOf(const torch::Tensor& w, const torch::Tensor& b, const torch::Tensor& m, const torch::Tensor& v, double eps, torch::ScalarType type) {
  auto c = [type](const torch::Tensor& t) { return t.to(type).view({1, -1, 1, 1}); };
  const auto invstd = (c(v) + eps).rsqrt();
  const auto scale = c(w) * invstd;
  const auto shift = c(b) - c(m) * scale;
  return {scale, shift, c(m), invstd};
}

torch::Tensor emulatedAffine(const torch::Tensor& x, const Affine& a) { return x.to(a.scale.scalar_type()) * a.scale + a.shift; }

torch::Tensor emulatedForward(const torch::Tensor& x, const torch::Tensor& r, const Affine& a, bool relu) {
  auto v = emulatedAffine(x, a);
  if (r.defined()) v = v + r.to(v.scalar_type());
  if (relu) v = torch::where(v > 0, v, torch::zeros({}, v.options()));  // NaN → 0, as the kernel's v > 0 ? v : 0
  return v.to(x.scalar_type()).contiguous(x.suggest_memory_format());
}

/// {∂x, ∂r, Σg, Σg·x̂} as frozenBnBackwardCuda returns them.
std::vector<torch::Tensor> emulatedBackward(const torch::Tensor& gy, const torch::Tensor& gy2, const torch::Tensor& y, const torch::Tensor& x,
                                            const Affine& a, bool relu, bool wantResidual) {
  const auto type = a.scale.scalar_type();
  auto g = (gy2.defined() ? gy + gy2 : gy).to(type);  // the sum in the storage type, as autograd's
  if (relu) {
    const auto out = y.defined() ? y : emulatedAffine(x, a).to(x.scalar_type());
    g = torch::where(out > 0, g, torch::zeros({}, g.options()));
  }
  const auto sumG = g.sum({0, 2, 3}).to(torch::kFloat32);
  const auto sumGx = (g * ((x.to(type) - a.mean) * a.invstd)).sum({0, 2, 3}).to(torch::kFloat32);
  const auto format = x.suggest_memory_format();
  return {(g * a.scale).to(x.scalar_type()).contiguous(format), wantResidual ? g.to(x.scalar_type()).contiguous(format) : torch::Tensor(), sumG, sumGx};
}

/// y = act(x·s + t [+ r]); gradients for x, r, the BatchNorm weight and bias (the running statistics are constants). Inputs
/// x, r (x itself when `residual` is false), weight, bias, mean, var; outputs y, and with `paired` y once more — the same
/// storage, a second handle for the output's second use, whose gradient reaches the backward apart from the first's and is
/// summed there (the sum autograd would otherwise write and read back as one more tensor). `emulate`: 0 for the CUDA kernels, else
/// the ATen replicas' arithmetic type (a torch::ScalarType).
struct FrozenBnFunction : public torch::autograd::Function<FrozenBnFunction> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& r,
                                                const torch::Tensor& weight, const torch::Tensor& bias, const torch::Tensor& mean, const torch::Tensor& var,
                                                double eps, bool relu, bool residual, bool paired, int64_t emulate) {
    ctx->set_materialize_grads(false);
    const auto rr = residual ? r : torch::Tensor();
    torch::Tensor y;
    if (emulate != 0) {
      y = emulatedForward(x, rr, affineOf(weight, bias, mean, var, eps, static_cast<torch::ScalarType>(emulate)), relu);
    } else {
#ifdef ONESTAGE_WITH_CUDA
      y = frozenBnForwardCuda(x, rr, weight, bias, mean, var, eps, relu);
#endif
    }
    // the ReLU's mask: from the output where a residual was added, else recomputed from x (the backward reads one tensor
    // fewer; ONESTAGE_RELU_MASK=output reads the output everywhere, for comparison)
    ctx->save_for_backward({x, relu && (residual || maskFromOutputAsked()) ? y : torch::Tensor(), weight, bias, mean, var});
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["flags"] = static_cast<int64_t>(relu) | static_cast<int64_t>(residual) << 1 | static_cast<int64_t>(paired) << 2;
    ctx->saved_data["emulate"] = emulate;
    if (paired) return {y, y.detach()};
    return {y};
  }
  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::tensor_list grads) {
    const int64_t flags = ctx->saved_data["flags"].toInt();
    const bool relu = flags & 1, residual = flags & 2, paired = flags & 4;
    const int64_t emulate = ctx->saved_data["emulate"].toInt();
    torch::autograd::tensor_list out(11);
    const auto s = ctx->get_saved_variables();
    const auto& x = s[0];
    const auto format = x.suggest_memory_format();
    auto prepare = [&](const torch::Tensor& g) { return g.defined() ? g.to(x.scalar_type()).contiguous(format) : g; };
    auto gy = prepare(grads[0]);
    auto gy2 = paired ? prepare(grads[1]) : torch::Tensor();
    if (!gy.defined()) std::swap(gy, gy2);
    if (!gy.defined()) return out;  // neither use of the output had a gradient
    const double eps = ctx->saved_data["eps"].toDouble();
    std::vector<torch::Tensor> g;
    if (emulate != 0) {
      g = emulatedBackward(gy, gy2, s[1], x, affineOf(s[2], s[3], s[4], s[5], eps, static_cast<torch::ScalarType>(emulate)), relu, residual);
    } else {
#ifdef ONESTAGE_WITH_CUDA
      g = frozenBnBackwardCuda(gy, gy2, s[1], x, s[2], s[3], s[4], s[5], eps, relu, residual);
#endif
    }
    // g: ∂x, ∂r, Σg (the bias's gradient), Σg·x̂ (the weight's)
    out[0] = g[0];
    if (residual) out[1] = g[1];
    out[2] = g[3];
    out[3] = g[2];
    return out;
  }
};

#ifdef ONESTAGE_WITH_CUDA
/// z = act(y + bias) with y a convolution's output (no bias of its own); gradients for y and the bias.
struct BiasActFunction : public torch::autograd::Function<BiasActFunction> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& y, const torch::Tensor& bias, bool relu) {
    const auto z = biasActForwardCuda(y, bias, relu);
    ctx->save_for_backward({relu ? z : torch::Tensor(), bias});
    ctx->saved_data["relu"] = relu;
    ctx->saved_data["type"] = static_cast<int64_t>(y.scalar_type());
    return z;
  }
  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::tensor_list grads) {
    const auto s = ctx->get_saved_variables();
    const bool relu = ctx->saved_data["relu"].toBool();
    const auto type = static_cast<c10::ScalarType>(ctx->saved_data["type"].toInt());
    const auto gz = grads[0].to(type).contiguous(at::MemoryFormat::ChannelsLast);
    const auto g = biasActBackwardCuda(gz, s[0], s[1], relu);
    return {relu ? g[0] : gz, g[1], torch::Tensor()};
  }
};
#endif

/// A frozen BatchNorm (eval mode, affine, running statistics in float32 on x's device) with a residual of x's shape and type.
bool frozenWith(const torch::nn::BatchNorm2dImpl& bn, const torch::Tensor& x, const torch::Tensor& r) {
  if (bn.is_training() || !bn.options.affine() || !bn.options.track_running_stats() || x.dim() != 4 || !x.is_floating_point()) return false;
  if (r.defined() && (r.sizes() != x.sizes() || r.scalar_type() != x.scalar_type() || r.device() != x.device())) return false;
  for (const auto* p : {&bn.weight, &bn.bias, &bn.running_mean, &bn.running_var})
    if (!p->defined() || p->scalar_type() != torch::kFloat32 || !p->is_contiguous() || p->device() != x.device()) return false;
  return true;
}

#ifdef ONESTAGE_WITH_CUDA
bool fusedAllowed() {
  static const bool allowed = [] {
    const char* v = std::getenv("ONESTAGE_FROZEN_BN");
    return !(v != nullptr && std::string(v) == "aten");
  }();
  return allowed;
}

bool aligned16(const torch::Tensor& t) { return reinterpret_cast<std::uintptr_t>(t.data_ptr()) % 16 == 0; }

/// Channels-last CUDA storage the kernels take: float, bf16 or half, C a multiple of the 16-byte vector, 16-byte aligned.
bool vectorisable(const torch::Tensor& x) {
  if (!x.is_cuda() || x.dim() != 4) return false;
  const auto type = x.scalar_type();
  if (type != torch::kFloat32 && type != torch::kBFloat16 && type != torch::kHalf) return false;
  const int64_t vec = 16 / static_cast<int64_t>(x.element_size());
  return x.size(1) % vec == 0 && x.is_contiguous(at::MemoryFormat::ChannelsLast) && aligned16(x);
}

/// Whether the CUDA kernels take this call.
bool fusable(const torch::nn::BatchNorm2dImpl& bn, const torch::Tensor& x, const torch::Tensor& r) {
  if (!fusedAllowed() || !vectorisable(x) || !frozenWith(bn, x, r)) return false;
  return !r.defined() || (r.is_contiguous(at::MemoryFormat::ChannelsLast) && aligned16(r));
}
#endif

/// act(bn(x) [+ residual]) as one output or two handles of it (`paired`, see FrozenBnFunction).
torch::autograd::variable_list batchNormActUses(torch::nn::BatchNorm2dImpl& bn, const torch::Tensor& x, const torch::Tensor& residual, bool relu, bool paired) {
  const auto emulation = emulationAsked();
  const bool emulate = emulation.has_value() && frozenWith(bn, x, residual);
#ifdef ONESTAGE_WITH_CUDA
  const bool kernels = !emulate && fusable(bn, x, residual);
#else
  const bool kernels = false;
#endif
  if (emulate || kernels)
    return FrozenBnFunction::apply(x, residual.defined() ? residual : x, bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.options.eps(), relu,
                                   residual.defined(), paired && pairsAllowed(), emulate ? static_cast<int64_t>(*emulation) : int64_t{0});
  auto h = bn.forward(x);
  if (residual.defined()) h = h + residual;
  return {relu ? torch::relu(h) : h};
}

}  // namespace

torch::Tensor batchNormAct(torch::nn::BatchNorm2dImpl& bn, const torch::Tensor& x, const torch::Tensor& residual, bool relu) {
  return batchNormActUses(bn, x, residual, relu, false)[0];
}

std::pair<torch::Tensor, torch::Tensor> batchNormActTwice(torch::nn::BatchNorm2dImpl& bn, const torch::Tensor& x, const torch::Tensor& residual, bool relu) {
  auto y = batchNormActUses(bn, x, residual, relu, true);
  return {y[0], y.size() > 1 ? y[1] : y[0]};
}

FrozenBnCheck frozenBatchNormWithGradient(const torch::Tensor& x, const torch::Tensor& r, const torch::Tensor& gy, const torch::Tensor& gy2,
                                          const torch::Tensor& params, double eps, bool relu, bool maskFromOutput, bool sumFirst) {
  if (x.dim() != 4 || !x.is_floating_point()) throw RangeError("Expected a floating-point input of shape [N, C, H, W]");
  const int64_t C = x.size(1);
  if (params.dim() != 2 || params.size(0) != 4 || params.size(1) != C || params.scalar_type() != torch::kFloat32 || params.device() != x.device())
    throw RangeError("Expected params of shape [4, " + std::to_string(C) + "] (weight, bias, mean, var) in float32 on the input's device");
  for (const auto& [t, name] : {std::pair{r, "residual"}, std::pair{gy, "gradOutput"}, std::pair{gy2, "gradOutput2"}})
    if (t.defined() && (t.sizes() != x.sizes() || t.scalar_type() != x.scalar_type() || t.device() != x.device()))
      throw RangeError(std::string(name) + " must have the input's shape, type and device");
  if (!gy.defined()) throw RangeError("gradOutput is required");
  if (!(eps > 0)) throw RangeError("eps must be positive");
  const auto w = params[0].contiguous(), b = params[1].contiguous(), m = params[2].contiguous(), v = params[3].contiguous();
  const auto g1 = sumFirst && gy2.defined() ? gy + gy2 : gy;
  const auto g2 = sumFirst ? torch::Tensor() : gy2;
  const bool keepOutput = relu && (r.defined() || maskFromOutput);
  FrozenBnCheck out;
  std::vector<torch::Tensor> g;
  if (x.is_cuda()) {
#ifdef ONESTAGE_WITH_CUDA
    for (const auto* t : {&x, &r, &gy, &gy2})
      if (t->defined() && !vectorisable(*t)) throw RangeError("the kernels take channels-last CUDA storage with C a multiple of 16 bytes' worth of elements");
    out.output = frozenBnForwardCuda(x, r, w, b, m, v, eps, relu);
    g = frozenBnBackwardCuda(g1, g2, keepOutput ? out.output : torch::Tensor(), x, w, b, m, v, eps, relu, r.defined());
    out.implementation = "kernels";
#else
    throw RangeError("this build has no CUDA kernels");
#endif
  } else {
    const auto a = affineOf(w, b, m, v, eps, torch::kFloat32);
    out.output = emulatedForward(x, r, a, relu);
    g = emulatedBackward(g1, g2, keepOutput ? out.output : torch::Tensor(), x, a, relu, r.defined());
    out.implementation = "emulation";
  }
  out.gradInput = g[0];
  out.gradResidual = g[1];
  out.gradBias = g[2];
  out.gradWeight = g[3];
  return out;
}

namespace {

/// The innermost FoldedBatchNorms alive on this thread (a scope, as LibTorch's NoGradGuard; none outside one).
thread_local const FoldedBatchNorms* tCurrentFolds = nullptr;

/// The convolution's padding when it is explicit numbers with zero padding (the form cuDNN's fused calls and the epilogue take), else null.
const torch::ExpandingArray<2>* zeroPadding(const torch::nn::Conv2dImpl& conv) {
#if TORCH_VERSION_MAJOR >= 2
  const auto* padding = std::get_if<torch::ExpandingArray<2>>(&conv.options.padding());
  const bool zeros = std::holds_alternative<torch::enumtype::kZeros>(conv.options.padding_mode());
#else
  const auto* padding = c10::get_if<torch::ExpandingArray<2>>(&conv.options.padding());
  const bool zeros = c10::holds_alternative<torch::enumtype::kZeros>(conv.options.padding_mode());
#endif
  return zeros ? padding : nullptr;
}

/// The registered float32 weight of `conv` (its `weight` member is the forward's bf16 copy under ConvWeightCopies).
torch::Tensor registeredWeight(const torch::nn::Conv2dImpl& conv) {
  const auto params = conv.named_parameters(/*recurse=*/false);
  const auto* w = params.find("weight");
  return w != nullptr ? *w : conv.weight;
}

/// The test hook ONESTAGE_TEST_CONV_FUSION=emulate: the inference fusions' arithmetic in ATen operations on any device and type.
bool fusionEmulationAsked() {
  const char* v = std::getenv("ONESTAGE_TEST_CONV_FUSION");
  if (v == nullptr || *v == 0) return false;
  if (std::string(v) == "emulate") return true;
  throw RangeError("ONESTAGE_TEST_CONV_FUSION must be emulate, not '" + std::string(v) + "'");
}

/// ONESTAGE_CONV_FUSION=off (read at every call, for benchmarks' comparisons): no inference fusions.
bool convFusionAllowed() {
  const char* v = std::getenv("ONESTAGE_CONV_FUSION");
  if (v == nullptr || *v == 0 || std::string(v) == "on") return true;
  if (std::string(v) == "off") return false;
  throw RangeError("ONESTAGE_CONV_FUSION must be on or off, not '" + std::string(v) + "'");
}

/// Whether cuDNN's fused calls may run in `type` here: a 16-bit type, the CUDA kernels allowed (not ONESTAGE_FROZEN_BN=aten), cuDNN on.
bool cudaFusionType(torch::ScalarType type) {
#ifdef ONESTAGE_WITH_CUDA
  return (type == torch::kBFloat16 || type == torch::kHalf) && fusedAllowed() && at::globalContext().userEnabledCuDNN();
#else
  (void)type;
  return false;
#endif
}

/// A tensor in the fusion's type: autocast's cached copy where autocast casts to it (a parameter used on several pyramid levels is
/// cast once per forward, as autocast's own convolutions do), else a cast.
torch::Tensor inType(const torch::Tensor& t, torch::ScalarType type) {
  if (t.scalar_type() == type) return t;
#ifdef ONESTAGE_WITH_CUDA
  if (t.is_cuda() && cudaAutocastType() == type) return at::autocast::cached_cast(type, t, c10::DeviceType::CUDA);
#endif
  return t.to(type);
}

/// An inference fusion for a ReLU after `conv` on x: cuDNN's fused convolution + bias + ReLU on CUDA, or the test hook's emulation.
struct Fusion {
  at::ScalarType type;  // the compute type: autocast's, or x's
  bool emulate;
};

/// Whether act(conv(x) + bias) may run as one fused inference call, and how: no gradient mode, a 2-d convolution with explicit zero
/// padding, and either the test hook or x on CUDA in channels-last storage with a 16-bit compute type (bf16 autocast or 16-bit x),
/// cuDNN on, and neither ONESTAGE_CONV_FUSION=off nor ONESTAGE_FROZEN_BN=aten. Float32 keeps the unfused path: its numbers stay
/// those of the reference code's to float rounding, where folding would change the last bits.
std::optional<Fusion> inferenceFusion(const torch::nn::Conv2dImpl& conv, const torch::Tensor& x) {
  if (torch::GradMode::is_enabled() || x.dim() != 4 || !x.is_floating_point() || zeroPadding(conv) == nullptr || !convFusionAllowed()) return std::nullopt;
  const auto autocast = x.is_cuda() ? cudaAutocastType() : std::nullopt;
  const auto type = autocast.value_or(x.scalar_type());
  if (fusionEmulationAsked()) return Fusion{type, true};
  if (!cudaFusionType(type) || !x.is_cuda() || !x.is_contiguous(at::MemoryFormat::ChannelsLast)) return std::nullopt;
  const auto w = registeredWeight(conv);
  if (!w.is_contiguous(at::MemoryFormat::ChannelsLast) || w.device() != x.device()) return std::nullopt;
  return Fusion{type, false};
}

/// relu(conv(x; w, b)) with w, b already in the fusion's type: cuDNN's fused call, or none where cuDNN finds no engine for it (the
/// caller then runs the unfused path).
std::optional<torch::Tensor> fusedConvRelu(const torch::nn::Conv2dImpl& conv, const Fusion& f, const torch::Tensor& x, const torch::Tensor& w,
                                           const torch::Tensor& b) {
  const auto& o = conv.options;
  const auto xt = x.to(f.type);
  if (f.emulate) return torch::relu(torch::conv2d(xt, w, b, o.stride(), *zeroPadding(conv), o.dilation(), o.groups()));
#ifdef ONESTAGE_WITH_CUDA
  try {
    return at::cudnn_convolution_relu(xt, w, b, o.stride(), *zeroPadding(conv), o.dilation(), o.groups());
  } catch (const c10::Error&) {
    return std::nullopt;
  }
#else
  return std::nullopt;
#endif
}

/// relu(bn(conv(x))) with the frozen BatchNorm folded into the convolution: weight w·s, bias t (the per-channel constants of the
/// fused forward kernel), each rounded once to the fusion's type; folded at every call from the registered float32 weight and the
/// BatchNorm's parameters — inside a CUDA graph's capture too, so replays follow the weights as they change. None where it does not apply.
std::optional<torch::Tensor> foldedConvBnRelu(torch::nn::Conv2dImpl& conv, torch::nn::BatchNorm2dImpl& bn, const torch::Tensor& x) {
  if (conv.bias.defined()) return std::nullopt;
  const auto fusion = inferenceFusion(conv, x);
  if (!fusion || !frozenWith(bn, x, {}) || emulationAsked()) return std::nullopt;
  const auto w = registeredWeight(conv);
  if (w.scalar_type() != torch::kFloat32 || w.dim() != 4 || w.size(0) != bn.options.num_features() || w.device() != bn.weight.device()) return std::nullopt;
  const double eps = bn.options.eps();
  torch::Tensor wf, bf;
  if (fusion->emulate) {
    const auto a = affineOf(bn.weight, bn.bias, bn.running_mean, bn.running_var, eps, torch::kFloat32);
    wf = (w * a.scale.view({-1, 1, 1, 1})).to(fusion->type);
    bf = a.shift.flatten().to(fusion->type);
  } else if (const auto* made = tCurrentFolds != nullptr ? tCurrentFolds->find(&conv, fusion->type) : nullptr) {
    std::tie(wf, bf) = *made;
  } else {
#ifdef ONESTAGE_WITH_CUDA
    std::tie(wf, bf) = foldBatchNormsCuda({{w, bn.weight, bn.bias, bn.running_mean, bn.running_var}}, {eps}, fusion->type).front();
#endif
  }
  return fusedConvRelu(conv, *fusion, x, wf, bf);
}

}  // namespace

FoldedBatchNorms::FoldedBatchNorms(const ConvBatchNormPairs& pairs) : previous_(tCurrentFolds) {
  tCurrentFolds = this;
  const auto type = cudaAutocastType();
  if (pairs.empty() || torch::GradMode::is_enabled() || !type || !cudaFusionType(*type) || !convFusionAllowed() || fusionEmulationAsked() || emulationAsked())
    return;
  type_ = *type;
  std::vector<std::array<torch::Tensor, 5>> entries;
  std::vector<double> eps;
  std::vector<const torch::nn::Conv2dImpl*> convs;
  for (const auto& [conv, bn] : pairs) {
    const auto w = registeredWeight(*conv);
    if (conv->bias.defined() || zeroPadding(*conv) == nullptr || w.scalar_type() != torch::kFloat32 || w.dim() != 4 || !w.is_cuda() ||
        !w.is_contiguous(at::MemoryFormat::ChannelsLast) || w.size(0) != bn->options.num_features() || !frozenWith(*bn, w, {}))
      continue;
    entries.push_back({w, bn->weight, bn->bias, bn->running_mean, bn->running_var});
    eps.push_back(bn->options.eps());
    convs.push_back(conv);
  }
#ifdef ONESTAGE_WITH_CUDA
  auto folded = foldBatchNormsCuda(entries, eps, type_);
  for (size_t i = 0; i < convs.size(); ++i) folds_.emplace_back(convs[i], std::move(folded[i]));
#endif
}

FoldedBatchNorms::~FoldedBatchNorms() { tCurrentFolds = previous_; }

const std::pair<torch::Tensor, torch::Tensor>* FoldedBatchNorms::find(const torch::nn::Conv2dImpl* conv, torch::ScalarType type) const {
  if (type != type_) return nullptr;
  for (const auto& [c, f] : folds_)
    if (c == conv) return &f;
  return nullptr;
}

torch::Tensor convBatchNormAct(torch::nn::Conv2dImpl& conv, torch::nn::BatchNorm2dImpl& bn, const torch::Tensor& x, bool relu) {
  if (relu)
    if (auto y = foldedConvBnRelu(conv, bn, x)) return *y;
  return batchNormAct(bn, conv.forward(x), {}, relu);
}

torch::Tensor convBiasAct(torch::nn::Conv2dImpl& conv, const torch::Tensor& x, bool relu) {
  const auto* padding = zeroPadding(conv);
  if (relu && conv.bias.defined()) {
    if (const auto fusion = inferenceFusion(conv, x)) {
      // the weight is the forward's copy in the fusion's type under amp (ConvWeightCopies), else cast here (autocast's cache)
      if (auto y = fusedConvRelu(conv, *fusion, x, inType(conv.weight, fusion->type), inType(conv.bias, fusion->type))) return *y;
    }
  }
#ifdef ONESTAGE_WITH_CUDA
  if (fusedAllowed() && x.is_cuda() && conv.bias.defined() && padding != nullptr && conv.bias.scalar_type() == torch::kFloat32 && conv.bias.is_contiguous()) {
    const auto y = torch::conv2d(x, conv.weight, {}, conv.options.stride(), *padding, conv.options.dilation(), conv.options.groups());
    if (vectorisable(y)) return BiasActFunction::apply(y, conv.bias, relu);
    const auto h = y + conv.bias.to(y.scalar_type()).view({1, -1, 1, 1});
    return relu ? torch::relu(h) : h;
  }
#else
  (void)padding;
#endif
  const auto h = conv.forward(x);
  return relu ? torch::relu(h) : h;
}

}  // namespace onestage
