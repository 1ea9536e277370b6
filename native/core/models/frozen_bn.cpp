#include "core/models/frozen_bn.h"

#include <cstdint>
#include <cstdlib>
#include <string>
#include <variant>

#include <torch/version.h>

namespace onestage {

#ifdef ONESTAGE_WITH_CUDA
at::Tensor frozenBnForwardCuda(const at::Tensor& x, const at::Tensor& r, const at::Tensor& w, const at::Tensor& b, const at::Tensor& m,
                               const at::Tensor& v, double eps, bool relu);
std::vector<at::Tensor> frozenBnBackwardCuda(const at::Tensor& gy, const at::Tensor& y, const at::Tensor& x, const at::Tensor& w, const at::Tensor& b,
                                             const at::Tensor& m, const at::Tensor& v, double eps, bool relu, bool wantResidual);
at::Tensor biasActForwardCuda(const at::Tensor& y, const at::Tensor& bias, bool relu);
std::vector<at::Tensor> biasActBackwardCuda(const at::Tensor& gz, const at::Tensor& z, const at::Tensor& bias, bool relu);

namespace {

bool fusedAllowed() {
  static const bool allowed = [] {
    const char* v = std::getenv("ONESTAGE_FROZEN_BN");
    return !(v != nullptr && std::string(v) == "aten");
  }();
  return allowed;
}

bool aligned16(const torch::Tensor& t) { return reinterpret_cast<std::uintptr_t>(t.data_ptr()) % 16 == 0; }

/// y = act(x·s + t [+ r]); gradients for x, r, the BatchNorm weight and bias (the running statistics are constants).
template <bool Residual>
struct FrozenBnFunction : public torch::autograd::Function<FrozenBnFunction<Residual>> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& r, const torch::Tensor& weight,
                               const torch::Tensor& bias, const torch::Tensor& mean, const torch::Tensor& var, double eps, bool relu) {
    const auto y = frozenBnForwardCuda(x, Residual ? r : torch::Tensor(), weight, bias, mean, var, eps, relu);
    ctx->save_for_backward({x, y, weight, bias, mean, var});
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["relu"] = relu;
    return y;
  }
  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::tensor_list grads) {
    const auto s = ctx->get_saved_variables();
    const auto& x = s[0];
    const auto gy = grads[0].to(x.scalar_type()).contiguous(at::MemoryFormat::ChannelsLast);
    const auto g = frozenBnBackwardCuda(gy, s[1], x, s[2], s[3], s[4], s[5], ctx->saved_data["eps"].toDouble(), ctx->saved_data["relu"].toBool(), Residual);
    // g: ∂x, ∂r, Σg (the bias's gradient), Σg·x̂ (the weight's)
    return {g[0], Residual ? g[1] : torch::Tensor(), g[3], g[2], torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

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

/// Channels-last CUDA storage the kernels take: float, bf16 or half, C a multiple of the 16-byte vector, 16-byte aligned.
bool vectorisable(const torch::Tensor& x) {
  if (!x.is_cuda() || x.dim() != 4) return false;
  const auto type = x.scalar_type();
  if (type != torch::kFloat32 && type != torch::kBFloat16 && type != torch::kHalf) return false;
  const int64_t vec = 16 / static_cast<int64_t>(x.element_size());
  return x.size(1) % vec == 0 && x.is_contiguous(at::MemoryFormat::ChannelsLast) && aligned16(x);
}

bool fusable(const torch::nn::BatchNorm2dImpl& bn, const torch::Tensor& x, const torch::Tensor& r) {
  if (!fusedAllowed() || bn.is_training() || !bn.options.affine() || !bn.options.track_running_stats() || !vectorisable(x)) return false;
  if (r.defined() && (r.sizes() != x.sizes() || r.scalar_type() != x.scalar_type() || r.device() != x.device() || !r.is_contiguous(at::MemoryFormat::ChannelsLast) || !aligned16(r)))
    return false;
  for (const auto* p : {&bn.weight, &bn.bias, &bn.running_mean, &bn.running_var})
    if (!p->defined() || p->scalar_type() != torch::kFloat32 || !p->is_contiguous() || p->device() != x.device()) return false;
  return true;
}

}  // namespace
#endif

torch::Tensor batchNormAct(torch::nn::BatchNorm2dImpl& bn, const torch::Tensor& x, const torch::Tensor& residual, bool relu) {
#ifdef ONESTAGE_WITH_CUDA
  if (fusable(bn, x, residual)) {
    const double eps = bn.options.eps();
    if (residual.defined())
      return FrozenBnFunction<true>::apply(x, residual, bn.weight, bn.bias, bn.running_mean, bn.running_var, eps, relu);
    return FrozenBnFunction<false>::apply(x, x, bn.weight, bn.bias, bn.running_mean, bn.running_var, eps, relu);
  }
#endif
  auto h = bn.forward(x);
  if (residual.defined()) h = h + residual;
  return relu ? torch::relu(h) : h;
}

torch::Tensor convBiasAct(torch::nn::Conv2dImpl& conv, const torch::Tensor& x, bool relu) {
#ifdef ONESTAGE_WITH_CUDA
#if TORCH_VERSION_MAJOR >= 2
  const auto* padding = std::get_if<torch::ExpandingArray<2>>(&conv.options.padding());
  const bool zeros = std::holds_alternative<torch::enumtype::kZeros>(conv.options.padding_mode());
#else
  const auto* padding = c10::get_if<torch::ExpandingArray<2>>(&conv.options.padding());
  const bool zeros = c10::holds_alternative<torch::enumtype::kZeros>(conv.options.padding_mode());
#endif
  if (fusedAllowed() && x.is_cuda() && conv.bias.defined() && padding != nullptr && zeros &&
      conv.bias.scalar_type() == torch::kFloat32 && conv.bias.is_contiguous()) {
    const auto y = torch::conv2d(x, conv.weight, {}, conv.options.stride(), *padding, conv.options.dilation(), conv.options.groups());
    if (vectorisable(y)) return BiasActFunction::apply(y, conv.bias, relu);
    const auto h = y + conv.bias.to(y.scalar_type()).view({1, -1, 1, 1});
    return relu ? torch::relu(h) : h;
  }
#endif
  const auto h = conv.forward(x);
  return relu ? torch::relu(h) : h;
}

}  // namespace onestage
