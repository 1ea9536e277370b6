// CUDA kernels of the fused GHM losses (ghm.cpp, ghm_math.h):
//   GHM-C, labels form: element i of row r has target (labels[r] == class), gradient norm |σ(x) − t|;
//   GHM-R: element i has d = pred − target, gradient norm |d / sqrt(d² + μ²)|.
// Each loss: a per-block shared-memory histogram of the bins, then one pass writing the weighted
// terms, and one backward pass writing the gradient; the bin is recomputed, never stored. Indices are
// 32-bit when the tensor allows (64-bit division is emulated on the GPU).
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

/// Gradient norm and target of GHM-C element i (labels form).
struct ClassElement {
  const float* x;
  const int64_t* labels;
  const bool* valid;
  template <typename Index>
  __device__ bool at(Index i, Index C, float& g, float& t, float& p) const {
    const Index r = i / C;
    t = labels[r] == i - r * C ? 1.f : 0.f;
    p = ghmSigmoid(x[i]);
    g = fabsf(p - t);
    return valid[r];
  }
};

/// Gradient norm of GHM-R element i.
struct RegressionElement {
  const float* pred;
  const float* target;
  const float* weight;
  float mu2;
  template <typename Index>
  __device__ bool at(Index i, Index, float& g, float& d, float& root) const {
    d = pred[i] - target[i];
    root = sqrtf(d * d + mu2);
    g = fabsf(d / sqrtf(mu2 + d * d));
    return weight[i] > 0.f;
  }
};

template <typename Element, typename Index>
__global__ void countKernel(Element e, const float* __restrict__ edges, int bins, Index total, Index C,
                            unsigned long long* __restrict__ counts) {
  extern __shared__ unsigned long long hist[];
  for (int k = threadIdx.x; k < bins; k += blockDim.x) hist[k] = 0;
  __syncthreads();
  for (Index i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
    float g, a, b;
    if (!e.at(i, C, g, a, b)) continue;
    const int64_t bin = ghmBin(g, edges, bins);
    if (bin >= 0) atomicAdd(&hist[bin], 1ULL);
  }
  __syncthreads();
  for (int k = threadIdx.x; k < bins; k += blockDim.x)
    if (hist[k]) atomicAdd(&counts[k], hist[k]);
}

template <typename Index>
__global__ void classTermsKernel(ClassElement e, const float* __restrict__ edges, const float* __restrict__ table, int bins,
                                 Index total, Index C, float* __restrict__ out) {
  for (Index i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
    float g, t, p;
    const int64_t bin = e.at(i, C, g, t, p) ? ghmBin(g, edges, bins) : -1;
    out[i] = bin < 0 ? 0.f : table[bin] * bceWithLogits(e.x[i], t);
  }
}

template <typename Index>
__global__ void classGradKernel(ClassElement e, const float* __restrict__ edges, const float* __restrict__ table,
                                const float* __restrict__ scale, int bins, Index total, Index C, float* __restrict__ grad) {
  const float k = scale[0];
  for (Index i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
    float g, t, p;
    const int64_t bin = e.at(i, C, g, t, p) ? ghmBin(g, edges, bins) : -1;
    grad[i] = bin < 0 ? 0.f : k * table[bin] * (p - t);
  }
}

template <typename Index>
__global__ void regressionTermsKernel(RegressionElement e, float mu, const float* __restrict__ edges, const float* __restrict__ table,
                                      int bins, Index total, float* __restrict__ out) {
  for (Index i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
    float g, d, root;
    const int64_t bin = e.at(i, Index(1), g, d, root) ? ghmBin(g, edges, bins) : -1;
    out[i] = bin < 0 ? 0.f : (root - mu) * table[bin];
  }
}

template <typename Index>
__global__ void regressionGradKernel(RegressionElement e, const float* __restrict__ edges, const float* __restrict__ table,
                                     const float* __restrict__ scale, int bins, Index total, float* __restrict__ grad) {
  const float k = scale[0];
  for (Index i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
    float g, d, root;
    const int64_t bin = e.at(i, Index(1), g, d, root) ? ghmBin(g, edges, bins) : -1;
    grad[i] = bin < 0 ? 0.f : k * table[bin] * (d / root);
  }
}

/// Runs `launch(Index{})` with 32-bit indices when `total` fits.
template <typename F>
void withIndex(int64_t total, F launch) {
  if (total < INT32_MAX) launch(int32_t{0});
  else launch(int64_t{0});
}

at::Tensor histogram(int64_t bins, const at::Tensor& like, const std::function<void(unsigned long long*)>& run) {
  auto counts = at::zeros({bins}, like.options().dtype(at::kLong));
  run(reinterpret_cast<unsigned long long*>(counts.data_ptr<int64_t>()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return counts.to(at::kDouble);
}

}  // namespace

at::Tensor ghmcCountsCuda(const at::Tensor& x, const at::Tensor& labels, const at::Tensor& valid, const at::Tensor& edges, int64_t bins) {
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t total = x.numel();
  const ClassElement e{x.data_ptr<float>(), labels.data_ptr<int64_t>(), valid.data_ptr<bool>()};
  return histogram(bins, x, [&](unsigned long long* counts) {
    if (total == 0) return;
    withIndex(total, [&](auto index) {
      using Index = decltype(index);
      countKernel<ClassElement, Index><<<blocksFor(total), kThreads, bins * sizeof(unsigned long long), at::cuda::getCurrentCUDAStream()>>>(
          e, edges.data_ptr<float>(), static_cast<int>(bins), static_cast<Index>(total), static_cast<Index>(x.size(1)), counts);
    });
  });
}

at::Tensor ghmcTermsCuda(const at::Tensor& x, const at::Tensor& labels, const at::Tensor& valid, const at::Tensor& edges,
                         const at::Tensor& table, int64_t bins) {
  const c10::cuda::CUDAGuard guard(x.device());
  auto out = at::empty_like(x);
  const int64_t total = x.numel();
  const ClassElement e{x.data_ptr<float>(), labels.data_ptr<int64_t>(), valid.data_ptr<bool>()};
  if (total > 0)
    withIndex(total, [&](auto index) {
      using Index = decltype(index);
      classTermsKernel<Index><<<blocksFor(total), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
          e, edges.data_ptr<float>(), table.data_ptr<float>(), static_cast<int>(bins), static_cast<Index>(total),
          static_cast<Index>(x.size(1)), out.data_ptr<float>());
    });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor ghmcGradCuda(const at::Tensor& x, const at::Tensor& labels, const at::Tensor& valid, const at::Tensor& edges,
                        const at::Tensor& table, const at::Tensor& scale, int64_t bins) {
  const c10::cuda::CUDAGuard guard(x.device());
  auto grad = at::empty_like(x);
  const int64_t total = x.numel();
  const ClassElement e{x.data_ptr<float>(), labels.data_ptr<int64_t>(), valid.data_ptr<bool>()};
  if (total > 0)
    withIndex(total, [&](auto index) {
      using Index = decltype(index);
      classGradKernel<Index><<<blocksFor(total), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
          e, edges.data_ptr<float>(), table.data_ptr<float>(), scale.data_ptr<float>(), static_cast<int>(bins),
          static_cast<Index>(total), static_cast<Index>(x.size(1)), grad.data_ptr<float>());
    });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return grad;
}

at::Tensor ghmrCountsCuda(const at::Tensor& pred, const at::Tensor& target, const at::Tensor& weight, double mu,
                          const at::Tensor& edges, int64_t bins) {
  const c10::cuda::CUDAGuard guard(pred.device());
  const int64_t total = pred.numel();
  const RegressionElement e{pred.data_ptr<float>(), target.data_ptr<float>(), weight.data_ptr<float>(), static_cast<float>(mu * mu)};
  return histogram(bins, pred, [&](unsigned long long* counts) {
    if (total == 0) return;
    withIndex(total, [&](auto index) {
      using Index = decltype(index);
      countKernel<RegressionElement, Index><<<blocksFor(total), kThreads, bins * sizeof(unsigned long long), at::cuda::getCurrentCUDAStream()>>>(
          e, edges.data_ptr<float>(), static_cast<int>(bins), static_cast<Index>(total), Index(1), counts);
    });
  });
}

at::Tensor ghmrTermsCuda(const at::Tensor& pred, const at::Tensor& target, const at::Tensor& weight, double mu,
                         const at::Tensor& edges, const at::Tensor& table, int64_t bins) {
  const c10::cuda::CUDAGuard guard(pred.device());
  auto out = at::empty_like(pred);
  const int64_t total = pred.numel();
  const RegressionElement e{pred.data_ptr<float>(), target.data_ptr<float>(), weight.data_ptr<float>(), static_cast<float>(mu * mu)};
  if (total > 0)
    withIndex(total, [&](auto index) {
      using Index = decltype(index);
      regressionTermsKernel<Index><<<blocksFor(total), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
          e, static_cast<float>(mu), edges.data_ptr<float>(), table.data_ptr<float>(), static_cast<int>(bins), static_cast<Index>(total),
          out.data_ptr<float>());
    });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor ghmrGradCuda(const at::Tensor& pred, const at::Tensor& target, const at::Tensor& weight, double mu, const at::Tensor& edges,
                        const at::Tensor& table, const at::Tensor& scale, int64_t bins) {
  const c10::cuda::CUDAGuard guard(pred.device());
  auto grad = at::empty_like(pred);
  const int64_t total = pred.numel();
  const RegressionElement e{pred.data_ptr<float>(), target.data_ptr<float>(), weight.data_ptr<float>(), static_cast<float>(mu * mu)};
  if (total > 0)
    withIndex(total, [&](auto index) {
      using Index = decltype(index);
      regressionGradKernel<Index><<<blocksFor(total), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
          e, edges.data_ptr<float>(), table.data_ptr<float>(), scale.data_ptr<float>(), static_cast<int>(bins), static_cast<Index>(total),
          grad.data_ptr<float>());
    });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return grad;
}

}  // namespace onestage
