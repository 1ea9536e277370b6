// Whole-model updates in a few multi-tensor kernels instead of a handful per parameter: gradient
// norm and clipping, the SGD and AdamW updates (LibTorch's per-parameter arithmetic, same order), and
// the EMA of the weights. The optimizer state lives in LibTorch's optimizer objects (so checkpoints
// are the same whichever implementation ran), these functions only do the arithmetic.
#pragma once
#include <torch/torch.h>

#include <vector>

namespace onestage {

/// How the optimizer update runs: "loop" (LibTorch's optimizer, per parameter), "foreach" (multi-tensor
/// kernels, `torch._foreach_*`), "fused" (one fused kernel on CUDA: AdamW's `torch._fused_adamw_` with
/// LibTorch ≥ 2, SGD's `torch._fused_sgd_` with LibTorch ≥ 2.4 — then queued before the losses are read,
/// the skip decided on the device), "auto" (fused where available, else foreach).
enum class UpdateImpl { Loop, Foreach, Fused };

/// Resolves the option string for a model on `device` (throws a RangeError for an unknown value or
/// 'fused' where it is not available).
UpdateImpl resolveUpdateImpl(const std::string& name, const std::string& optimizerType, const torch::Device& device);

/// The 2-norm of all gradients together (a device scalar, float32; no host synchronisation), and
/// the gradients scaled in place by min(1, maxNorm / (norm + 1e-6)) when maxNorm is finite —
/// torch.nn.utils.clip_grad_norm_.
torch::Tensor clipGradNorm(const std::vector<torch::Tensor>& grads, double maxNorm);

struct AdamWHyper {
  double lr, beta1, beta2, eps, weightDecay;
};

/// AdamW over parameters (each with a defined gradient), its moments and its step count after this
/// update (`steps[i]`, counting this step, as LibTorch's AdamWParamState).
void adamwUpdate(const std::vector<torch::Tensor>& params, const std::vector<torch::Tensor>& grads,
                 const std::vector<torch::Tensor>& expAvg, const std::vector<torch::Tensor>& expAvgSq,
                 const std::vector<int64_t>& steps, const AdamWHyper& h, bool fused);

struct SgdHyper {
  double lr, momentum, weightDecay;
  bool nesterov;
};

/// SGD with momentum (LibTorch's semantics: the buffer starts as a copy of the first gradient).
/// buffers[i] undefined: this is the parameter's first step; it is set to the new buffer.
void sgdUpdate(const std::vector<torch::Tensor>& params, const std::vector<torch::Tensor>& grads,
               std::vector<torch::Tensor>& buffers, const SgdHyper& h);

/// LibTorch ≥ 2.4 has `_fused_sgd_` with the learning rate as a device tensor and a device-side skip
/// (`found_inf`): what a step needs to queue its update before its losses are read.
#define ONESTAGE_HAS_FUSED_SGD (TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4))
constexpr bool kHasFusedSgd = ONESTAGE_HAS_FUSED_SGD;

/// sgdUpdate decided on the device: nothing changes (parameters, buffers) when `skip` — a float32 scalar
/// on the parameters' device, 1 or 0 — is 1; no host synchronisation, so a CUDA graph can hold it. A
/// parameter's first buffer is zeros (momentum·0 + d is LibTorch's copy of d), so a skipped first step
/// leaves a zero buffer. On CUDA with kHasFusedSgd one fused kernel reading `lrTensor` (float32 scalar on
/// the device, the step's rate; `h.lr` is not read there); elsewhere sgdUpdate's operations, tensor by
/// tensor with h.lr (the same values bit for bit), each result kept or dropped by `skip`.
void sgdUpdateUnlessSkipped(const std::vector<torch::Tensor>& params, const std::vector<torch::Tensor>& grads,
                            std::vector<torch::Tensor>& buffers, const SgdHyper& h, const torch::Tensor& lrTensor, const torch::Tensor& skip);

/// ema = d·ema + (1 − d)·target for floating tensors, a copy for the others (one kernel per group).
void emaUpdate(const std::vector<torch::Tensor>& ema, const std::vector<torch::Tensor>& targets, double d);

}  // namespace onestage
