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

#include <cstdint>
#include <type_traits>

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
    if (i < total && e.at(i, C, g, a, b)) bin = ghmBin(g, edges, bins);
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

/// GHM-C elements of this thread in grid-stride order: f(x, isTarget, valid) → the value stored at
/// out[i] (out ≠ null). Vec4 (C % 4 == 0, x and out 16-byte aligned): four elements of one row per
/// step — one row division and one 16-byte load and store for four elements.
template <bool Vec4, typename Index, typename F>
__device__ inline void forEachClassElement(const float* __restrict__ x, const int64_t* __restrict__ labels, const bool* __restrict__ valid, Index total,
                                           Index C, float* __restrict__ out, F f) {
  const Index first = blockIdx.x * static_cast<Index>(blockDim.x) + threadIdx.x, stride = static_cast<Index>(gridDim.x) * blockDim.x;
  if (Vec4) {
    for (Index q = first; q < total / 4; q += stride) {
      const Index i = 4 * q, r = i / C, c = i - r * C;
      const float4 v = reinterpret_cast<const float4*>(x)[q];
      const int64_t label = labels[r];
      const bool ok = valid[r];
      const float4 o = make_float4(f(v.x, label == c, ok), f(v.y, label == c + 1, ok), f(v.z, label == c + 2, ok), f(v.w, label == c + 3, ok));
      if (out) reinterpret_cast<float4*>(out)[q] = o;
    }
  } else {
    for (Index i = first; i < total; i += stride) {
      const Index r = i / C;
      const float o = f(x[i], labels[r] == i - r * C, valid[r]);
      if (out) out[i] = o;
    }
  }
}

/// Edges (bins + 1) and, when given, the weight table (bins) into shared memory.
__device__ inline void loadBins(const float* __restrict__ edgesG, const float* __restrict__ tableG, int bins, float* edges, float* table) {
  for (int k = threadIdx.x; k <= bins; k += blockDim.x) {
    edges[k] = edgesG[k];
    if (tableG != nullptr && k < bins) table[k] = tableG[k];
  }
  __syncthreads();
}

constexpr int kSmallBins = 32;

/// GHM-C histogram for bins ≤ kSmallBins: a private histogram per thread in shared memory
/// (hist[bin · kThreads + thread]: each thread its own bank, no atomics, no conflicts), summed per bin
/// by one warp at the end and added to the global counts.
template <bool Vec4, typename Index>
__global__ void classCountSmallKernel(const float* __restrict__ x, const int64_t* __restrict__ labels, const bool* __restrict__ valid,
                                      const float* __restrict__ edgesG, int bins, Index total, Index C, unsigned long long* __restrict__ counts) {
  __shared__ unsigned int hist[kSmallBins * kThreads];
  __shared__ float edges[kSmallBins + 1];
  for (int k = threadIdx.x; k < bins * kThreads; k += blockDim.x) hist[k] = 0;
  loadBins(edgesG, nullptr, bins, edges, nullptr);
  unsigned int* mine = hist + threadIdx.x;
  forEachClassElement<Vec4>(x, labels, valid, total, C, static_cast<float*>(nullptr), [&](float v, bool target, bool ok) {
    const int b = ok ? ghmBin(fabsf(ghmSigmoid(v) - (target ? 1.f : 0.f)), edges, bins) : -1;
    if (b >= 0) mine[b * kThreads] += 1;
    return 0.f;
  });
  __syncthreads();
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  for (int k = warp; k < bins; k += kThreads / 32) {
    unsigned int n = 0;
    for (int j = lane; j < kThreads; j += 32) n += hist[k * kThreads + j];
    for (int o = 16; o > 0; o >>= 1) n += __shfl_down_sync(0xffffffffu, n, o);
    if (lane == 0 && n) atomicAdd(&counts[k], static_cast<unsigned long long>(n));
  }
}

/// GHM-C forward: per-block sums of table[bin]·BCE (edges and table in shared memory).
template <bool Vec4, typename Index>
__global__ void classTermsKernel(const float* __restrict__ x, const int64_t* __restrict__ labels, const bool* __restrict__ valid,
                                 const float* __restrict__ edgesG, const float* __restrict__ tableG, int bins, Index total, Index C,
                                 float* __restrict__ partial) {
  extern __shared__ float ghmShared[];
  float *edges = ghmShared, *table = ghmShared + bins + 1;
  loadBins(edgesG, tableG, bins, edges, table);
  float sum = 0.f;
  forEachClassElement<Vec4>(x, labels, valid, total, C, static_cast<float*>(nullptr), [&](float v, bool target, bool ok) {
    const float t = target ? 1.f : 0.f;
    const int b = ok ? ghmBin(fabsf(ghmSigmoid(v) - t), edges, bins) : -1;
    if (b >= 0) sum += table[b] * bceWithLogits(v, t);
    return 0.f;
  });
  blockSum(sum, partial);
}

/// GHM-C backward, recomputed from the logits (no gradient kept from the forward): table[bin]·(σ(x) − t)
/// times upstream · lossWeight / tot (0 weight outside the bins and for invalid rows).
template <bool Vec4, typename Index>
__global__ void classGradKernel(const float* __restrict__ x, const int64_t* __restrict__ labels, const bool* __restrict__ valid,
                                const float* __restrict__ edgesG, const float* __restrict__ tableG, int bins, Index total, Index C,
                                const float* __restrict__ upstream, const float* __restrict__ tot, float lossWeight, float* __restrict__ grad) {
  extern __shared__ float ghmShared[];
  float *edges = ghmShared, *table = ghmShared + bins + 1;
  loadBins(edgesG, tableG, bins, edges, table);
  const float scale = upstream[0] * lossWeight / tot[0];
  forEachClassElement<Vec4>(x, labels, valid, total, C, grad, [&](float v, bool target, bool ok) {
    const float t = target ? 1.f : 0.f;
    const float p = ghmSigmoid(v);
    const int b = ok ? ghmBin(fabsf(p - t), edges, bins) : -1;
    const float w = b < 0 ? 0.f : table[b];
    return w * (p - t) * scale;
  });
}

/// GHM-R forward: per-block sums of table[bin]·(sqrt(d² + μ²) − μ), and (grad ≠ null) table[bin]·d/sqrt(d² + μ²).
template <typename Index>
__global__ void regressionTermsKernel(RegressionElement e, float mu, const float* __restrict__ edges, const float* __restrict__ table,
                                      int bins, Index total, float* __restrict__ partial, float* __restrict__ grad) {
  float sum = 0.f;
  for (Index i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
    float g, d, root;
    const int bin = e.at(i, Index(1), g, d, root) ? ghmBin(g, edges, bins) : -1;
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
  if (total < (int64_t{1} << 30)) launch(int32_t{0});  // (room for the grid stride past the end)
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

namespace {

/// Launches a GHM-C kernel: launch(Index, Vec4) with 16-byte steps when the rows allow (C % 4 == 0,
/// x and out 16-byte aligned) and 32-bit indices when the size allows; blocks for the element count.
template <typename F>
void launchClass(const at::Tensor& x, const void* out, unsigned maxBlocks, F launch) {
  const int64_t C = x.size(1), total = x.numel();
  const bool vec4 = C % 4 == 0 && reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 == 0 && reinterpret_cast<uintptr_t>(out) % 16 == 0;
  const int64_t items = vec4 ? total / 4 : total;
  const int64_t wanted = (items + kThreads - 1) / kThreads;
  const unsigned blocks = static_cast<unsigned>(wanted < 1 ? 1 : (wanted > maxBlocks ? maxBlocks : wanted));
  withIndex(total, [&](auto index) {
    if (vec4) launch(index, std::true_type{}, blocks);
    else launch(index, std::false_type{}, blocks);
  });
}

constexpr unsigned kClassBlocks = 2048;

}  // namespace

at::Tensor ghmcCountsCuda(const at::Tensor& x, const at::Tensor& labels, const at::Tensor& valid, const at::Tensor& edges, int64_t bins) {
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t total = x.numel();
  return histogram(bins, x, [&](unsigned long long* counts) {
    if (total == 0) return;
    const auto stream = at::cuda::getCurrentCUDAStream();
    if (bins <= kSmallBins) {
      launchClass(x, nullptr, 1024, [&](auto index, auto vec4, unsigned blocks) {
        using Index = decltype(index);
        classCountSmallKernel<decltype(vec4)::value, Index><<<blocks, kThreads, 0, stream>>>(
            x.data_ptr<float>(), labels.data_ptr<int64_t>(), valid.data_ptr<bool>(), edges.data_ptr<float>(), static_cast<int>(bins),
            static_cast<Index>(total), static_cast<Index>(x.size(1)), counts);
      });
      return;
    }
    const ClassElement e{x.data_ptr<float>(), labels.data_ptr<int64_t>(), valid.data_ptr<bool>()};
    withIndex(total, [&](auto index) {
      using Index = decltype(index);
      countKernel<ClassElement, Index><<<blocksFor(total), kThreads, bins * sizeof(unsigned int), stream>>>(
          e, edges.data_ptr<float>(), static_cast<int>(bins), static_cast<Index>(total), static_cast<Index>(x.size(1)), counts);
    });
  });
}

at::Tensor ghmcTermsCuda(const at::Tensor& x, const at::Tensor& labels, const at::Tensor& valid, const at::Tensor& edges, const at::Tensor& table,
                         int64_t bins) {
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t total = x.numel();
  if (total == 0) return at::zeros({}, x.options());
  at::Tensor partial;
  launchClass(x, nullptr, kClassBlocks, [&](auto index, auto vec4, unsigned blocks) {
    using Index = decltype(index);
    partial = at::empty({static_cast<int64_t>(blocks)}, x.options());  // every block writes its entry
    classTermsKernel<decltype(vec4)::value, Index><<<blocks, kThreads, (2 * bins + 1) * sizeof(float), at::cuda::getCurrentCUDAStream()>>>(
        x.data_ptr<float>(), labels.data_ptr<int64_t>(), valid.data_ptr<bool>(), edges.data_ptr<float>(), table.data_ptr<float>(),
        static_cast<int>(bins), static_cast<Index>(total), static_cast<Index>(x.size(1)), partial.data_ptr<float>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return partial.sum();
}

at::Tensor ghmcGradCuda(const at::Tensor& x, const at::Tensor& labels, const at::Tensor& valid, const at::Tensor& edges, const at::Tensor& table,
                        int64_t bins, const at::Tensor& upstream, const at::Tensor& tot, double lossWeight) {
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t total = x.numel();
  auto grad = at::empty_like(x);
  if (total == 0) return grad;
  const auto up = upstream.to(at::kFloat).contiguous(), t = tot.to(at::kFloat).contiguous();
  launchClass(x, grad.data_ptr(), kClassBlocks, [&](auto index, auto vec4, unsigned blocks) {
    using Index = decltype(index);
    classGradKernel<decltype(vec4)::value, Index><<<blocks, kThreads, (2 * bins + 1) * sizeof(float), at::cuda::getCurrentCUDAStream()>>>(
        x.data_ptr<float>(), labels.data_ptr<int64_t>(), valid.data_ptr<bool>(), edges.data_ptr<float>(), table.data_ptr<float>(),
        static_cast<int>(bins), static_cast<Index>(total), static_cast<Index>(x.size(1)), up.data_ptr<float>(), t.data_ptr<float>(),
        static_cast<float>(lossWeight), grad.data_ptr<float>());
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
