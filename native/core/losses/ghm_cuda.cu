// CUDA kernels of the fused GHM losses (ghm.cpp, ghm_math.h):
//   GHM-C, labels form: element i of row r has target (labels[r] == class), gradient norm |σ(x) − t|;
//   GHM-R: element i has d = pred − target, gradient norm |d / sqrt(d² + μ²)|.
// Each loss: a per-block shared-memory histogram of the bins (warp-aggregated: the lanes of a warp
// that fall in one bin add their count once — most elements of GHM-C share bin 0), then one pass that
// sums the weighted terms per block (deterministic: a fixed grid, fixed order) and, when a gradient is
// needed, writes it without the upstream factor; the backward is then one multiplication. The bin is
// recomputed, never stored. Indices are 32-bit when the tensor allows (64-bit division is emulated on
// the GPU).
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
  extern __shared__ unsigned int hist[];
  for (int k = threadIdx.x; k < bins; k += blockDim.x) hist[k] = 0;
  __syncthreads();
  // every lane of a warp runs the same number of iterations (the bound is tested on the warp's first
  // index), so that __match_any_sync sees the whole warp
  const Index lane = threadIdx.x & 31;
  for (Index first = blockIdx.x * blockDim.x + (threadIdx.x - lane); first < total; first += gridDim.x * blockDim.x) {
    const Index i = first + lane;
    float g, a, b;
    int bin = -1;
    if (i < total && e.at(i, C, g, a, b)) bin = static_cast<int>(ghmBin(g, edges, bins));
    const unsigned peers = __match_any_sync(0xffffffffu, bin);
    if (bin >= 0 && static_cast<int>(lane) == __ffs(peers) - 1) atomicAdd(&hist[bin], static_cast<unsigned>(__popc(peers)));
  }
  __syncthreads();
  for (int k = threadIdx.x; k < bins; k += blockDim.x)
    if (hist[k]) atomicAdd(&counts[k], static_cast<unsigned long long>(hist[k]));
}

/// Sum of the block's values into partial[blockIdx.x] (blockDim.x == kThreads).
__device__ inline void blockSum(float v, float* __restrict__ partial) {
  __shared__ float warpSums[kThreads / 32];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  if ((threadIdx.x & 31) == 0) warpSums[threadIdx.x >> 5] = v;
  __syncthreads();
  if (threadIdx.x < 32) {
    v = threadIdx.x < kThreads / 32 ? warpSums[threadIdx.x] : 0.f;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    if (threadIdx.x == 0) partial[blockIdx.x] = v;
  }
}

/// GHM-C forward: per-block sums of table[bin]·BCE, and (grad ≠ null) table[bin]·(σ(x) − t).
template <typename Index>
__global__ void classTermsKernel(ClassElement e, const float* __restrict__ edges, const float* __restrict__ table, int bins,
                                 Index total, Index C, float* __restrict__ partial, float* __restrict__ grad) {
  float sum = 0.f;
  for (Index i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
    float g, t, p;
    const int64_t bin = e.at(i, C, g, t, p) ? ghmBin(g, edges, bins) : -1;
    const float w = bin < 0 ? 0.f : table[bin];
    if (bin >= 0) sum += w * bceWithLogits(e.x[i], t);
    if (grad) grad[i] = w * (p - t);
  }
  blockSum(sum, partial);
}

/// GHM-R forward: per-block sums of table[bin]·(sqrt(d² + μ²) − μ), and (grad ≠ null) table[bin]·d/sqrt(d² + μ²).
template <typename Index>
__global__ void regressionTermsKernel(RegressionElement e, float mu, const float* __restrict__ edges, const float* __restrict__ table,
                                      int bins, Index total, float* __restrict__ partial, float* __restrict__ grad) {
  float sum = 0.f;
  for (Index i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
    float g, d, root;
    const int64_t bin = e.at(i, Index(1), g, d, root) ? ghmBin(g, edges, bins) : -1;
    const float w = bin < 0 ? 0.f : table[bin];
    if (bin >= 0) sum += (root - mu) * w;
    if (grad) grad[i] = w * (d / root);
  }
  blockSum(sum, partial);
}

/// The bin weights from the (global) counts: tot / count, or tot / acc with momentum (acc updated in
/// place, non-empty bins only), divided by the number of non-empty bins; 0 for empty bins. One block.
/// The EMA's products and sum are rounded separately (no fused multiply-add), as on the CPU.
__global__ void tableKernel(const double* __restrict__ counts, const double* __restrict__ tot, double* __restrict__ acc, float* __restrict__ table,
                            int bins, double momentum) {
  const int k = threadIdx.x;
  const double c = k < bins ? counts[k] : 0.0;
  const int nonEmpty = __syncthreads_count(k < bins && c > 0);
  if (k >= bins) return;
  double denom = c;
  if (acc != nullptr) {
    if (c > 0) acc[k] = __dadd_rn(__dmul_rn(momentum, acc[k]), __dmul_rn(1.0 - momentum, c));
    denom = acc[k];
  }
  const float n = nonEmpty > 0 ? static_cast<float>(nonEmpty) : 1.f;
  table[k] = c > 0 ? static_cast<float>(tot[0] / (denom > 1e-300 ? denom : 1e-300)) / n : 0.f;
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

at::Tensor ghmTableCuda(const at::Tensor& counts, const at::Tensor& tot, const at::Tensor& accSum, double momentum) {
  const c10::cuda::CUDAGuard guard(counts.device());
  const int64_t bins = counts.size(0);
  TORCH_CHECK(bins <= 1024, "ghmTableCuda: at most 1024 bins");
  auto table = at::empty({bins}, counts.options().dtype(at::kFloat));
  const auto c = counts.to(at::kDouble).contiguous(), t = tot.to(at::kDouble).reshape({1}).contiguous();
  tableKernel<<<1, 1024, 0, at::cuda::getCurrentCUDAStream()>>>(c.data_ptr<double>(), t.data_ptr<double>(),
                                                                 momentum > 0 ? accSum.data_ptr<double>() : nullptr, table.data_ptr<float>(),
                                                                 static_cast<int>(bins), momentum);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return table;
}

at::Tensor ghmcCountsCuda(const at::Tensor& x, const at::Tensor& labels, const at::Tensor& valid, const at::Tensor& edges, int64_t bins) {
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t total = x.numel();
  const ClassElement e{x.data_ptr<float>(), labels.data_ptr<int64_t>(), valid.data_ptr<bool>()};
  return histogram(bins, x, [&](unsigned long long* counts) {
    if (total == 0) return;
    withIndex(total, [&](auto index) {
      using Index = decltype(index);
      countKernel<ClassElement, Index><<<blocksFor(total), kThreads, bins * sizeof(unsigned int), at::cuda::getCurrentCUDAStream()>>>(
          e, edges.data_ptr<float>(), static_cast<int>(bins), static_cast<Index>(total), static_cast<Index>(x.size(1)), counts);
    });
  });
}

std::pair<at::Tensor, at::Tensor> ghmcTermsCuda(const at::Tensor& x, const at::Tensor& labels, const at::Tensor& valid, const at::Tensor& edges,
                                                const at::Tensor& table, int64_t bins, bool withGrad) {
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t total = x.numel();
  auto partial = at::zeros({static_cast<int64_t>(blocksFor(total))}, x.options());  // every block writes its entry (zeros: total may be 0)
  auto grad = withGrad ? at::empty_like(x) : at::Tensor();
  const ClassElement e{x.data_ptr<float>(), labels.data_ptr<int64_t>(), valid.data_ptr<bool>()};
  if (total > 0)
    withIndex(total, [&](auto index) {
      using Index = decltype(index);
      classTermsKernel<Index><<<blocksFor(total), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
          e, edges.data_ptr<float>(), table.data_ptr<float>(), static_cast<int>(bins), static_cast<Index>(total),
          static_cast<Index>(x.size(1)), partial.data_ptr<float>(), withGrad ? grad.data_ptr<float>() : nullptr);
    });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {partial.sum(), grad};
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
      countKernel<RegressionElement, Index><<<blocksFor(total), kThreads, bins * sizeof(unsigned int), at::cuda::getCurrentCUDAStream()>>>(
          e, edges.data_ptr<float>(), static_cast<int>(bins), static_cast<Index>(total), Index(1), counts);
    });
  });
}

std::pair<at::Tensor, at::Tensor> ghmrTermsCuda(const at::Tensor& pred, const at::Tensor& target, const at::Tensor& weight, double mu,
                                                const at::Tensor& edges, const at::Tensor& table, int64_t bins, bool withGrad) {
  const c10::cuda::CUDAGuard guard(pred.device());
  const int64_t total = pred.numel();
  auto partial = at::zeros({static_cast<int64_t>(blocksFor(total))}, pred.options());  // (zeros: total may be 0)
  auto grad = withGrad ? at::empty_like(pred) : at::Tensor();
  const RegressionElement e{pred.data_ptr<float>(), target.data_ptr<float>(), weight.data_ptr<float>(), static_cast<float>(mu * mu)};
  if (total > 0)
    withIndex(total, [&](auto index) {
      using Index = decltype(index);
      regressionTermsKernel<Index><<<blocksFor(total), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
          e, static_cast<float>(mu), edges.data_ptr<float>(), table.data_ptr<float>(), static_cast<int>(bins), static_cast<Index>(total),
          partial.data_ptr<float>(), withGrad ? grad.data_ptr<float>() : nullptr);
    });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {partial.sum(), grad};
}

}  // namespace onestage
