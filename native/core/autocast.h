// bf16 autocast of CUDA operations for a scope (the C++ form of `torch.autocast('cuda', dtype=torch.bfloat16)`):
// the training step's forward pass and detect(..., {amp}) use it, with the convolution weights' bf16
// copies made in one pass (ConvWeightCopies) instead of autocast's cast per weight.
#pragma once
#include <ATen/autocast_mode.h>
#include <torch/torch.h>
#include <torch/version.h>

#include <optional>
#include <utility>
#include <vector>

namespace onestage {

/// The type CUDA operations are autocast to in the current scope (bf16 under CudaBf16Autocast), or none where CUDA
/// autocast is off.
inline std::optional<at::ScalarType> cudaAutocastType() {
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
  if (!at::autocast::is_autocast_enabled(at::kCUDA)) return std::nullopt;
  return at::autocast::get_autocast_dtype(at::kCUDA);
#else
  if (!at::autocast::is_enabled()) return std::nullopt;
  return at::autocast::get_autocast_gpu_dtype();
#endif
}

/// On for the guard's lifetime when `on`; restores the previous autocast state.
class CudaBf16Autocast {
 public:
  explicit CudaBf16Autocast(bool on) : on_(on) {
    if (!on_) return;
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
    wasEnabled_ = at::autocast::is_autocast_enabled(at::kCUDA);
    oldDtype_ = at::autocast::get_autocast_dtype(at::kCUDA);
    at::autocast::set_autocast_dtype(at::kCUDA, at::kBFloat16);
    at::autocast::set_autocast_enabled(at::kCUDA, true);
#else
    wasEnabled_ = at::autocast::is_enabled();
    oldDtype_ = at::autocast::get_autocast_gpu_dtype();
    at::autocast::set_autocast_gpu_dtype(at::kBFloat16);
    at::autocast::set_enabled(true);
#endif
    at::autocast::increment_nesting();
  }
  ~CudaBf16Autocast() {
    if (!on_) return;
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
    at::autocast::set_autocast_enabled(at::kCUDA, wasEnabled_);
    at::autocast::set_autocast_dtype(at::kCUDA, oldDtype_);
#else
    at::autocast::set_enabled(wasEnabled_);
    at::autocast::set_autocast_gpu_dtype(oldDtype_);
#endif
  }
  CudaBf16Autocast(const CudaBf16Autocast&) = delete;
  CudaBf16Autocast& operator=(const CudaBf16Autocast&) = delete;

 private:
  bool on_;
  bool wasEnabled_ = false;
  at::ScalarType oldDtype_ = at::kHalf;
};

/// The working copies of a module's convolution weights in the forward's compute type, made for one
/// forward: every Conv2d's `weight` member is swapped for its copy for the guard's lifetime (the
/// registered parameter stays the float32 master the optimizer updates) and restored after, on errors
/// too. Under bf16 autocast a convolution given a bf16 weight casts nothing, so the copies replace
/// autocast's cast kernel per weight use — and, in the backward, the cast of each weight's gradient
/// back to float32 — by one multi-tensor copy each way (LibTorch ≥ 2.1's `_foreach_copy_`; a copy per
/// weight before). The values are autocast's: the same round-to-nearest-even cast, one copy of a weight
/// used several times (the head's convolutions on five levels: their gradients summed in bf16, then
/// cast, as autocast's cast cache does). Trained weights go through one autograd node (the gradients of
/// unused ones stay undefined); frozen ones (requires_grad false) are copied without a graph. The module
/// must not be used by another thread meanwhile (the models' forwards run under their mutex).
class ConvWeightCopies {
 public:
  /// No copies when `dtype` is empty.
  ConvWeightCopies(torch::nn::Module& module, std::optional<at::ScalarType> dtype);
  ~ConvWeightCopies();
  ConvWeightCopies(const ConvWeightCopies&) = delete;
  ConvWeightCopies& operator=(const ConvWeightCopies&) = delete;

  /// What a forward is for: data-parallel steps make no copies — their one autograd node would hand
  /// every convolution's gradient over at the end of the backward, and the gradient buckets all-reduce
  /// gradients as they come.
  enum class Purpose { detection, trainingStep, dataParallelStep };

  /// The copies' type for a forward of a model on `device`: bf16 under amp on CUDA, none otherwise, for a
  /// data-parallel step, or when ONESTAGE_BF16_WEIGHTS=autocast (autocast's own casts; the benchmarks'
  /// comparison). The test hook ONESTAGE_TEST_WEIGHT_COPIES=float32|float64 forces copies of that type on
  /// any device (with ":train", for training steps only).
  static std::optional<at::ScalarType> forForward(bool amp, const torch::Device& device, Purpose purpose);

  /// How many weights this guard swapped.
  size_t size() const { return saved_.size(); }

 private:
  std::vector<std::pair<torch::nn::Conv2dImpl*, torch::Tensor>> saved_;
};

/// A forward of `module` on `device` under bf16 autocast (when `amp`) with the convolution weights'
/// copies (ConvWeightCopies).
class Bf16Forward {
 public:
  Bf16Forward(torch::nn::Module& module, const torch::Device& device, bool amp, ConvWeightCopies::Purpose purpose)
      : autocast_(amp), copies_(module, ConvWeightCopies::forForward(amp, device, purpose)) {}

 private:
  CudaBf16Autocast autocast_;
  ConvWeightCopies copies_;
};

}  // namespace onestage
