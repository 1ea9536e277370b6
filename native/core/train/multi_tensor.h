// Whole-model updates in a few multi-tensor kernels instead of a handful per parameter: gradient
// norm and clipping, the SGD and AdamW updates (LibTorch's per-parameter arithmetic, same order), and
// the EMA of the weights. The optimizer state lives in LibTorch's optimizer objects (so checkpoints
// are the same whichever implementation ran), these functions only do the arithmetic.
#pragma once
#include <torch/torch.h>

#include <vector>

namespace onestage {

/// How the optimizer update runs: "loop" (LibTorch's optimizer, per parameter), "foreach" (multi-tensor
/// kernels, `torch._foreach_*`), "fused" (AdamW only: one fused kernel, `torch._fused_adamw_`; LibTorch ≥ 2
/// on CUDA), "auto" (fused where available, else foreach — SGD always foreach).
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

/// ema = d·ema + (1 − d)·target for floating tensors, a copy for the others (one kernel per group).
void emaUpdate(const std::vector<torch::Tensor>& ema, const std::vector<torch::Tensor>& targets, double d);

}  // namespace onestage
