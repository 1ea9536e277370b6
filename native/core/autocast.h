// bf16 autocast of CUDA operations for a scope (the C++ form of `torch.autocast('cuda', dtype=torch.bfloat16)`):
// the training step's forward pass and detect(..., {amp}) use it.
#pragma once
#include <ATen/autocast_mode.h>
#include <torch/version.h>

namespace onestage {

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

}  // namespace onestage
