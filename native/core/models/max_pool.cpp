#include "core/models/max_pool.h"

#include <cstdint>
#include <cstdlib>

#include "core/errors.h"

namespace onestage {

#ifdef ONESTAGE_WITH_CUDA
at::Tensor maxPoolForwardCuda(const at::Tensor& x, int64_t k, int64_t s, int64_t p, const at::Tensor& codes);
at::Tensor maxPoolBackwardCuda(const at::Tensor& gy, const at::Tensor& codes, int64_t height, int64_t width, int64_t k, int64_t s, int64_t p);

namespace {

bool kernelsAllowed() {
  static const bool allowed = [] {
    const char* v = std::getenv("ONESTAGE_MAX_POOL");
    return !(v != nullptr && std::string(v) == "aten");
  }();
  return allowed;
}

/// The pooled size of one side (floor mode, dilation 1).
int64_t pooled(int64_t size, int64_t k, int64_t s, int64_t p) { return (size + 2 * p - k) / s + 1; }

/// y = max over each window; backward: each window's gradient to its argmax (from the codes).
struct MaxPoolFunction : public torch::autograd::Function<MaxPoolFunction> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x, int64_t k, int64_t s, int64_t p) {
    const int64_t oh = pooled(x.size(2), k, s, p), ow = pooled(x.size(3), k, s, p);
    // codes only where a backward will read them
    const bool grad = x.requires_grad();
    const auto codes = grad ? at::empty({x.size(0), oh, ow, x.size(1)}, x.options().dtype(at::kByte)) : at::Tensor();
    const auto y = maxPoolForwardCuda(x, k, s, p, codes);
    ctx->save_for_backward({codes});
    ctx->saved_data["h"] = x.size(2);
    ctx->saved_data["w"] = x.size(3);
    ctx->saved_data["k"] = k;
    ctx->saved_data["s"] = s;
    ctx->saved_data["p"] = p;
    ctx->saved_data["type"] = static_cast<int64_t>(x.scalar_type());
    return y;
  }
  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::tensor_list grads) {
    const auto codes = ctx->get_saved_variables()[0];
    const auto type = static_cast<c10::ScalarType>(ctx->saved_data["type"].toInt());
    const auto gy = grads[0].to(type).contiguous(at::MemoryFormat::ChannelsLast);
    const auto gx = maxPoolBackwardCuda(gy, codes, ctx->saved_data["h"].toInt(), ctx->saved_data["w"].toInt(), ctx->saved_data["k"].toInt(),
                                        ctx->saved_data["s"].toInt(), ctx->saved_data["p"].toInt());
    return {gx, torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace
#endif

std::string maxPool2dImplementation(const torch::Tensor& x, int64_t kernel, int64_t stride, int64_t padding) {
#ifdef ONESTAGE_WITH_CUDA
  if (!kernelsAllowed() || !x.is_cuda() || x.dim() != 4 || kernel < 1 || kernel > 15 || stride < 1 || padding < 0 || 2 * padding > kernel) return "aten";
  const auto type = x.scalar_type();
  if (type != torch::kFloat32 && type != torch::kBFloat16 && type != torch::kHalf) return "aten";
  const int64_t vec = 16 / static_cast<int64_t>(x.element_size());
  if (x.size(1) % vec != 0 || !x.is_contiguous(at::MemoryFormat::ChannelsLast) || reinterpret_cast<std::uintptr_t>(x.data_ptr()) % 16 != 0) return "aten";
  if (pooled(x.size(2), kernel, stride, padding) < 1 || pooled(x.size(3), kernel, stride, padding) < 1) return "aten";
  return "onestage";
#else
  (void)x;
  (void)kernel;
  (void)stride;
  (void)padding;
  return "aten";
#endif
}

torch::Tensor maxPool2d(const torch::Tensor& x, int64_t kernel, int64_t stride, int64_t padding) {
#ifdef ONESTAGE_WITH_CUDA
  if (maxPool2dImplementation(x, kernel, stride, padding) == "onestage") return MaxPoolFunction::apply(x, kernel, stride, padding);
#endif
  return torch::max_pool2d(x, kernel, stride, padding);
}

MaxPoolResult maxPool2dWithGradient(const torch::Tensor& x, const torch::Tensor& gradOutput, int64_t kernel, int64_t stride, int64_t padding, bool aten) {
  if (kernel < 1 || kernel > 15 || stride < 1 || padding < 0 || 2 * padding > kernel)
    throw RangeError("max pooling needs 1 ≤ kernel ≤ 15, stride ≥ 1 and 0 ≤ 2·padding ≤ kernel");
  const torch::AutoGradMode grad(true);
  const auto input = x.detach().requires_grad_(true);
  MaxPoolResult r;
  r.implementation = aten ? "aten" : maxPool2dImplementation(input, kernel, stride, padding);
  r.output = aten ? torch::max_pool2d(input, kernel, stride, padding) : maxPool2d(input, kernel, stride, padding);
  if (gradOutput.sizes() != r.output.sizes()) throw RangeError("gradOutput must have the output's shape");
  r.output.backward(gradOutput.to(r.output.scalar_type()));
  r.output = r.output.detach();
  r.gradInput = input.grad();
  return r;
}

}  // namespace onestage
