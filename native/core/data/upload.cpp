#include "core/data/upload.h"

#include "core/capture_lock.h"

#ifdef ONESTAGE_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace onestage {

torch::TensorOptions stagingOptions(const torch::Device& device, torch::ScalarType dtype) {
  auto options = torch::TensorOptions().dtype(dtype);
#ifdef ONESTAGE_WITH_CUDA
  if (device.is_cuda()) options = options.pinned_memory(true);
#else
  (void)device;
#endif
  return options;
}

std::vector<torch::Tensor> uploadTensors(const std::vector<torch::Tensor>& host, const torch::Device& device,
                                         const std::function<torch::Tensor(const torch::Tensor&)>& then) {
  std::vector<torch::Tensor> out;
  out.reserve(host.size());
#ifdef ONESTAGE_WITH_CUDA
  if (device.is_cuda()) {
    const CudaWorkScope noCapture;  // no graph capture meanwhile (core/capture_lock.h)
    const c10::cuda::CUDAGuard guard(device);
    const auto copies = c10::cuda::getStreamFromPool(false, device.index());
    const auto consumer = c10::cuda::getDefaultCUDAStream(device.index());
    {
      const c10::cuda::CUDAStreamGuard onCopies(copies);
      for (const auto& t : host) {
        const auto source = t.is_pinned() ? t.contiguous() : t.contiguous().to(stagingOptions(device, t.scalar_type()));
        auto target = torch::empty(source.sizes(), source.options().device(device).pinned_memory(false));
        // asynchronous from page-locked memory; the host allocator keeps `source` until the copy is done
        target.copy_(source, /*non_blocking=*/true);
        if (then) target = then(target);
        target.record_stream(consumer);
        out.push_back(target);
      }
    }
    copies.synchronize();
    return out;
  }
#endif
  for (const auto& t : host) out.push_back(then ? then(t.to(device)) : t.to(device));
  return out;
}

}  // namespace onestage
