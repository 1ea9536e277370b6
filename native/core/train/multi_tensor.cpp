#include "core/train/multi_tensor.h"

#include <cmath>
#include <limits>
#include <map>

#include "core/errors.h"

namespace onestage {

namespace {

constexpr bool kHasFusedAdamW = TORCH_VERSION_MAJOR >= 2;

}  // namespace

UpdateImpl resolveUpdateImpl(const std::string& name, const std::string& optimizerType, const torch::Device& device) {
  const bool fusedHere = device.is_cuda() && ((kHasFusedAdamW && optimizerType == "adamw") || (kHasFusedSgd && optimizerType == "sgd"));
  if (name == "loop") return UpdateImpl::Loop;
  if (name == "foreach") return UpdateImpl::Foreach;
  if (name == "auto") return fusedHere ? UpdateImpl::Fused : UpdateImpl::Foreach;
  if (name == "fused") {
    if (!fusedHere)
      throw RangeError("optimizer.implementation 'fused' needs CUDA and LibTorch ≥ 2 for AdamW, ≥ 2.4 for SGD (this is " + optimizerType + " on " + device.str() +
                       ", LibTorch " + std::to_string(TORCH_VERSION_MAJOR) + "." + std::to_string(TORCH_VERSION_MINOR) + "); use 'auto' or 'foreach'");
    return UpdateImpl::Fused;
  }
  throw RangeError("Expected 'auto', 'fused', 'foreach' or 'loop' for optimizer.implementation but received '" + name + "'");
}

torch::Tensor clipGradNorm(const std::vector<torch::Tensor>& grads, double maxNorm) {
  torch::NoGradGuard noGrad;
  if (grads.empty()) return torch::zeros({}, torch::kFloat32);
  const auto norms = at::_foreach_norm(grads, 2);
  const auto total = torch::stack(norms).to(torch::kFloat32).norm(2);
  if (!std::isfinite(maxNorm)) return total;
  // clip_grad_norm_: grads · min(1, max / (norm + 1e-6)); a factor of exactly 1 leaves them unchanged
  const auto coef = (maxNorm / (total + 1e-6)).clamp_max(1.0);
#if TORCH_VERSION_MAJOR >= 2 && (TORCH_VERSION_MAJOR > 2 || TORCH_VERSION_MINOR >= 1)
  at::_foreach_mul_(grads, coef);
#else
  // LibTorch 1.13 has no tensor-scalar foreach product: the factor comes to the host (CPU builds)
  const double c = coef.item<double>();
  if (c < 1.0) at::_foreach_mul_(grads, c);
#endif
  return total;
}

void adamwUpdate(const std::vector<torch::Tensor>& params, const std::vector<torch::Tensor>& grads,
                 const std::vector<torch::Tensor>& expAvg, const std::vector<torch::Tensor>& expAvgSq,
                 const std::vector<int64_t>& steps, const AdamWHyper& h, bool fused) {
  torch::NoGradGuard noGrad;
  if (params.empty()) return;
  // parameters grouped by step count (all equal unless some missed gradients in earlier steps)
  std::map<int64_t, std::vector<size_t>> byStep;
  for (size_t i = 0; i < params.size(); ++i) byStep[steps[i]].push_back(i);
  for (const auto& [step, index] : byStep) {
    std::vector<torch::Tensor> p, g, m, v;
    for (size_t i : index) {
      p.push_back(params[i]);
      g.push_back(grads[i]);
      m.push_back(expAvg[i]);
      v.push_back(expAvgSq[i]);
    }
#if TORCH_VERSION_MAJOR >= 2
    if (fused) {
      // one read-only step tensor shared by every parameter of the group
      const auto stepTensor = torch::full({}, static_cast<double>(step), p.front().options().dtype(torch::kFloat32));
      const std::vector<torch::Tensor> stepList(p.size(), stepTensor);
      at::_fused_adamw_(p, g, m, v, {}, stepList, h.lr, h.beta1, h.beta2, h.weightDecay, h.eps, /*amsgrad=*/false,
                        /*maximize=*/false, c10::nullopt, c10::nullopt);
      continue;
    }
#else
    (void)fused;
#endif
    // LibTorch's AdamW arithmetic, operation by operation, over the whole list
    at::_foreach_mul_(p, 1.0 - h.lr * h.weightDecay);
    const double bc1 = 1.0 - std::pow(h.beta1, static_cast<double>(step));
    const double bc2 = 1.0 - std::pow(h.beta2, static_cast<double>(step));
    at::_foreach_mul_(m, h.beta1);
    at::_foreach_add_(m, g, 1.0 - h.beta1);
    at::_foreach_mul_(v, h.beta2);
    at::_foreach_addcmul_(v, g, g, 1.0 - h.beta2);
    auto denom = at::_foreach_sqrt(v);
    at::_foreach_div_(denom, std::sqrt(bc2));
    at::_foreach_add_(denom, h.eps);
    at::_foreach_addcdiv_(p, m, denom, -h.lr / bc1);
  }
}

void sgdUpdate(const std::vector<torch::Tensor>& params, const std::vector<torch::Tensor>& grads,
               std::vector<torch::Tensor>& buffers, const SgdHyper& h) {
  torch::NoGradGuard noGrad;
  if (params.empty()) return;
  std::vector<torch::Tensor> d = h.weightDecay != 0 ? at::_foreach_add(grads, params, h.weightDecay) : grads;
  if (h.momentum != 0) {
    std::vector<torch::Tensor> seen, fresh;
    for (size_t i = 0; i < params.size(); ++i) {
      if (buffers[i].defined()) {
        seen.push_back(buffers[i]);
        fresh.push_back(d[i]);
      } else {
        buffers[i] = d[i].clone().detach();  // LibTorch: the first buffer is the gradient itself
      }
    }
    if (!seen.empty()) {
      at::_foreach_mul_(seen, h.momentum);
      at::_foreach_add_(seen, fresh, 1.0);  // dampening 0
    }
    d = h.nesterov ? at::_foreach_add(d, buffers, h.momentum) : buffers;
  }
  at::_foreach_add_(params, d, -h.lr);
}

void sgdUpdateUnlessSkipped(const std::vector<torch::Tensor>& params, const std::vector<torch::Tensor>& grads,
                            std::vector<torch::Tensor>& buffers, const SgdHyper& h, const torch::Tensor& lrTensor, const torch::Tensor& skip) {
  torch::NoGradGuard noGrad;
  if (params.empty()) return;
  const bool momentum = h.momentum != 0;
  if (momentum)
    for (size_t i = 0; i < params.size(); ++i)
      if (!buffers[i].defined()) buffers[i] = torch::zeros_like(params[i], at::MemoryFormat::Preserve);
#if ONESTAGE_HAS_FUSED_SGD
  if (params.front().is_cuda()) {
    at::_fused_sgd_(params, grads, momentum ? buffers : std::vector<torch::Tensor>{}, h.weightDecay, h.momentum, lrTensor, /*dampening=*/0.0, h.nesterov,
                    /*maximize=*/false, /*is_first_step=*/false, c10::nullopt, skip);
    return;
  }
#else
  (void)lrTensor;
#endif
  const auto skipped = skip.to(torch::kBool);
  for (size_t i = 0; i < params.size(); ++i) {
    auto d = h.weightDecay != 0 ? grads[i].add(params[i], h.weightDecay) : grads[i];
    if (momentum) {
      const auto b = buffers[i].mul(h.momentum).add(d, 1.0);  // dampening 0
      d = h.nesterov ? d.add(b, h.momentum) : b;
      buffers[i].copy_(torch::where(skipped, buffers[i], b));
    }
    params[i].copy_(torch::where(skipped, params[i], params[i].add(d, -h.lr)));
  }
}

void emaUpdate(const std::vector<torch::Tensor>& ema, const std::vector<torch::Tensor>& targets, double d) {
  torch::NoGradGuard noGrad;
  std::vector<torch::Tensor> e, t;
  for (size_t i = 0; i < ema.size(); ++i) {
    if (ema[i].is_floating_point()) {
      e.push_back(ema[i]);
      t.push_back(targets[i].detach());
    } else {
      ema[i].copy_(targets[i]);  // e.g. BatchNorm's num_batches_tracked
    }
  }
  if (e.empty()) return;
  at::_foreach_mul_(e, d);
  at::_foreach_add_(e, t, 1.0 - d);
}

}  // namespace onestage
