// CUDA kernels of the fused GHM-C labels form (ghm.cpp, ghm_math.h): a per-block shared-memory
// histogram of gradient-norm bins, the weighted BCE terms, and the gradient. The bin of an element
// is recomputed in each pass instead of stored.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "core/losses/ghm_math.h"

namespace onestage {

namespace {

constexpr int kThreads = 256;

unsigned blocksFor(int64_t total) {
  const int64_t b = (total + kThreads - 1) / kThreads;
  return static_cast<unsigned>(b < 4096 ? (b < 1 ? 1 : b) : 4096);
}

__global__ void countKernel(const float* __restrict__ x, const int64_t* __restrict__ labels, const bool* __restrict__ valid,
                            const float* __restrict__ edges, int64_t bins, int64_t total, int64_t C,
                            unsigned long long* __restrict__ counts) {
  extern __shared__ unsigned long long hist[];
  for (int64_t k = threadIdx.x; k < bins; k += blockDim.x) hist[k] = 0;
  __syncthreads();
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total; i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / C;
    if (!valid[r]) continue;
    const float t = labels[r] == i % C ? 1.f : 0.f;
    const int64_t b = ghmBin(fabsf(ghmSigmoid(x[i]) - t), edges, bins);
    if (b >= 0) atomicAdd(&hist[b], 1ULL);
  }
  __syncthreads();
  for (int64_t k = threadIdx.x; k < bins; k += blockDim.x)
    if (hist[k]) atomicAdd(&counts[k], hist[k]);
}

__global__ void termsKernel(const float* __restrict__ x, const int64_t* __restrict__ labels, const bool* __restrict__ valid,
                            const float* __restrict__ edges, const float* __restrict__ table, int64_t bins, int64_t total,
                            int64_t C, float* __restrict__ out) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total; i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / C;
    const float t = labels[r] == i % C ? 1.f : 0.f;
    const int64_t b = valid[r] ? ghmBin(fabsf(ghmSigmoid(x[i]) - t), edges, bins) : -1;
    out[i] = b < 0 ? 0.f : table[b] * bceWithLogits(x[i], t);
  }
}

__global__ void gradKernel(const float* __restrict__ x, const int64_t* __restrict__ labels, const bool* __restrict__ valid,
                           const float* __restrict__ edges, const float* __restrict__ table, const float* __restrict__ scale,
                           int64_t bins, int64_t total, int64_t C, float* __restrict__ grad) {
  const float k = scale[0];
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total; i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / C;
    const float t = labels[r] == i % C ? 1.f : 0.f;
    const float p = ghmSigmoid(x[i]);
    const int64_t b = valid[r] ? ghmBin(fabsf(p - t), edges, bins) : -1;
    grad[i] = b < 0 ? 0.f : k * table[b] * (p - t);
  }
}

}  // namespace

at::Tensor ghmcCountsCuda(const at::Tensor& x, const at::Tensor& labels, const at::Tensor& valid, const at::Tensor& edges, int64_t bins) {
  const c10::cuda::CUDAGuard guard(x.device());
  auto counts = at::zeros({bins}, x.options().dtype(at::kLong));
  const int64_t total = x.numel();
  if (total > 0)
    countKernel<<<blocksFor(total), kThreads, bins * sizeof(unsigned long long), at::cuda::getCurrentCUDAStream()>>>(
        x.data_ptr<float>(), labels.data_ptr<int64_t>(), valid.data_ptr<bool>(), edges.data_ptr<float>(), bins, total, x.size(1),
        reinterpret_cast<unsigned long long*>(counts.data_ptr<int64_t>()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return counts.to(at::kDouble);
}

at::Tensor ghmcTermsCuda(const at::Tensor& x, const at::Tensor& labels, const at::Tensor& valid, const at::Tensor& edges,
                         const at::Tensor& table, int64_t bins) {
  const c10::cuda::CUDAGuard guard(x.device());
  auto out = at::empty_like(x);
  const int64_t total = x.numel();
  if (total > 0)
    termsKernel<<<blocksFor(total), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        x.data_ptr<float>(), labels.data_ptr<int64_t>(), valid.data_ptr<bool>(), edges.data_ptr<float>(), table.data_ptr<float>(), bins,
        total, x.size(1), out.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor ghmcGradCuda(const at::Tensor& x, const at::Tensor& labels, const at::Tensor& valid, const at::Tensor& edges,
                        const at::Tensor& table, const at::Tensor& scale, int64_t bins) {
  const c10::cuda::CUDAGuard guard(x.device());
  auto grad = at::empty_like(x);
  const int64_t total = x.numel();
  if (total > 0)
    gradKernel<<<blocksFor(total), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        x.data_ptr<float>(), labels.data_ptr<int64_t>(), valid.data_ptr<bool>(), edges.data_ptr<float>(), table.data_ptr<float>(),
        scale.data_ptr<float>(), bins, total, x.size(1), grad.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return grad;
}

}  // namespace onestage
