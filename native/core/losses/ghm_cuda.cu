// CUDA kernels of the fused GHM losses (ghm.cpp, ghm_math.h):
//   GHM-C, labels form: element i of row r has target (labels[r] == class), gradient norm |σ(x) − t|;
//   GHM-R: element i has d = pred − target, gradient norm |d / sqrt(d² + μ²)|.
// GHM-C (bins ≤ 32): the forward is one read of the logits — per bin, the count and the sum of the
// BCE terms of its elements (private per-thread columns in shared memory, no atomics), and the valid
// count — then one block reduces the per-block partials in a fixed order and a one-block kernel turns
// counts into the weight table (EMA) and the loss Σ table[bin]·sum[bin] / tot: the weights depend only
// on the bin, so no second pass is needed. The backward recomputes σ and the bin and writes the
// gradient with the upstream factor folded in. More bins: a histogram pass, then a terms pass.
// GHM-R: a per-block shared-memory histogram of the bins (warp-aggregated), then one pass that sums
// the weighted terms per block (deterministic: a fixed grid, fixed order) and, when a gradient is
// needed, writes it without the upstream factor; the backward is then one multiplication.
// The bin is recomputed, never stored. Indices are 32-bit when the tensor allows (64-bit division is
// emulated on the GPU). Grid-stride kernels get as many blocks as are resident at once (the occupancy
// calculator): no second, mostly empty wave.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "core/losses/ghm.h"
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

/// σ(x) exactly as ghmSigmoid (the bins depend on it) and binary_cross_entropy_with_logits(x, t) as
/// bceWithLogits, sharing the exponential: of bceWithLogits' exp(−m) and exp(−x − m) one is exp(0) = 1
/// and the other exp(−|x|), which is σ's exp(−x) for x ≥ 0 and its reciprocal for x < 0.
__device__ inline void classElement(float x, float t, float& p, float& bce) {
  const float en = expf(-x);
  p = 1.f / (1.f + en);
  const float m = fmaxf(-x, 0.f);
  // for x < 0, exp(x) as 1 / exp(−x) (within 2 ulp; the term log(1 + exp(x)) moves by ~1e-7 of itself)
  bce = (1.f - t) * x + m + logf(1.f + (x >= 0.f ? en : __fdividef(1.f, en)));
}

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
/// step — one 16-byte load and store for four elements. The row and column are advanced by the fixed
/// grid stride (one division per thread, none per step).
template <bool Vec4, typename Index, typename F>
__device__ inline void forEachClassElement(const float* __restrict__ x, const int64_t* __restrict__ labels, const bool* __restrict__ valid, Index total,
                                           Index C, float* __restrict__ out, F f) {
  constexpr Index kStep = Vec4 ? 4 : 1;
  if (total == 0) return;  // (C may be 0: no division by it)
  const Index first = (blockIdx.x * static_cast<Index>(blockDim.x) + threadIdx.x) * kStep;
  const Index stride = static_cast<Index>(gridDim.x) * blockDim.x * kStep;
  const Index rowStep = stride / C, colStep = stride - rowStep * C;
  Index r = first / C, c = first - r * C;
  for (Index i = first; i < total; i += stride) {
    const int64_t label = labels[r];
    const bool ok = valid[r];
    if (Vec4) {
      const float4 v = reinterpret_cast<const float4*>(x)[i / 4];
      const float4 o = make_float4(f(v.x, label == c, ok), f(v.y, label == c + 1, ok), f(v.z, label == c + 2, ok), f(v.w, label == c + 3, ok));
      if (out) reinterpret_cast<float4*>(out)[i / 4] = o;
    } else {
      const float o = f(x[i], label == c, ok);
      if (out) out[i] = o;
    }
    r += rowStep;
    c += colStep;
    if (c >= C) {
      c -= C;
      ++r;
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

/// GHM-C forward statistics for bins ≤ kGhmcStatsMaxBins, one read of the logits: per block, the count and
/// the BCE sum of every bin and the number of valid elements. Each thread keeps private columns in
/// shared memory (sums[bin · T + thread], then counts likewise: its own bank, no atomics, no
/// conflicts); one warp per bin sums the columns at the end. Partials are [bins][gridDim.x].
template <bool Vec4, typename Index>
__global__ void classStatsKernel(const float* __restrict__ x, const int64_t* __restrict__ labels, const bool* __restrict__ valid,
                                 const float* __restrict__ edgesG, int bins, Index total, Index C, unsigned* __restrict__ partialCounts,
                                 float* __restrict__ partialSums, unsigned* __restrict__ partialValid) {
  extern __shared__ float ghmShared[];
  __shared__ float edges[kGhmcStatsMaxBins + 1];
  __shared__ unsigned warpValid[32];
  const int T = static_cast<int>(blockDim.x);
  float* sums = ghmShared;
  unsigned* counts = reinterpret_cast<unsigned*>(ghmShared + bins * T);
  for (int k = threadIdx.x; k < bins * T; k += T) {
    sums[k] = 0.f;
    counts[k] = 0;
  }
  loadBins(edgesG, nullptr, bins, edges, nullptr);
  float* mySums = sums + threadIdx.x;
  unsigned* myCounts = counts + threadIdx.x;
  unsigned nValid = 0;
  forEachClassElement<Vec4>(x, labels, valid, total, C, static_cast<float*>(nullptr), [&](float v, bool target, bool ok) {
    if (ok) {
      ++nValid;
      const float t = target ? 1.f : 0.f;
      float p, bce;
      classElement(v, t, p, bce);
      const int b = ghmBin(fabsf(p - t), edges, bins);
      if (b >= 0) {
        myCounts[b * T] += 1;
        mySums[b * T] += bce;
      }
    }
    return 0.f;
  });
  __syncthreads();
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, warps = T >> 5;
  for (int k = warp; k < bins; k += warps) {
    unsigned n = 0;
    float sum = 0.f;
    for (int j = lane; j < T; j += 32) {
      n += counts[k * T + j];
      sum += sums[k * T + j];
    }
    for (int o = 16; o > 0; o >>= 1) {
      n += __shfl_down_sync(0xffffffffu, n, o);
      sum += __shfl_down_sync(0xffffffffu, sum, o);
    }
    if (lane == 0) {
      partialCounts[k * gridDim.x + blockIdx.x] = n;
      partialSums[k * gridDim.x + blockIdx.x] = sum;
    }
  }
  for (int o = 16; o > 0; o >>= 1) nValid += __shfl_down_sync(0xffffffffu, nValid, o);
  if (lane == 0) warpValid[warp] = nValid;
  __syncthreads();
  if (threadIdx.x == 0) {
    unsigned n = 0;
    for (int w = 0; w < warps; ++w) n += warpValid[w];
    partialValid[blockIdx.x] = n;
  }
}

/// Sums the statistics' partials in a fixed order (one block of 32 warps; warp k takes bin k, k + 32,
/// …; the bin index `bins` is the valid count): counts, sums and valid as float64.
__global__ void statsReduceKernel(const unsigned* __restrict__ partialCounts, const float* __restrict__ partialSums,
                                  const unsigned* __restrict__ partialValid, int blocks, int bins, double* __restrict__ counts,
                                  double* __restrict__ sums, double* __restrict__ validTotal) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  for (int k = warp; k <= bins; k += blockDim.x >> 5) {
    unsigned long long n = 0;
    double sum = 0.0;
    for (int j = lane; j < blocks; j += 32) {
      if (k < bins) {
        n += partialCounts[k * blocks + j];
        sum += partialSums[k * blocks + j];
      } else {
        n += partialValid[j];
      }
    }
    for (int o = 16; o > 0; o >>= 1) {
      n += __shfl_down_sync(0xffffffffu, n, o);
      sum += __shfl_down_sync(0xffffffffu, sum, o);
    }
    if (lane == 0) {
      if (k < bins) {
        counts[k] = static_cast<double>(n);
        sums[k] = sum;
      } else {
        validTotal[0] = static_cast<double>(n);
      }
    }
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
/// place, non-empty bins only), divided by the number of non-empty bins; 0 for empty bins; tot is
/// clamped to at least 1. One block. The EMA's products and sum are rounded separately (no fused
/// multiply-add), as on the CPU. With `sums` (the per-bin sums of the loss terms): loss =
/// lossWeight · Σ table·sums / tot and the float tot (for the backward).
__global__ void tableKernel(const double* __restrict__ counts, const double* __restrict__ totIn, double* __restrict__ acc, float* __restrict__ table,
                            int bins, double momentum, const double* __restrict__ sums, double lossWeight, float* __restrict__ loss,
                            float* __restrict__ totOut) {
  __shared__ double weighted[1024];
  const int k = threadIdx.x;
  const double c = k < bins ? counts[k] : 0.0;
  const double tot = fmax(totIn[0], 1.0);
  const int nonEmpty = __syncthreads_count(k < bins && c > 0);
  float w = 0.f;
  if (k < bins) {
    double denom = c;
    if (acc != nullptr) {
      if (c > 0) acc[k] = __dadd_rn(__dmul_rn(momentum, acc[k]), __dmul_rn(1.0 - momentum, c));
      denom = acc[k];
    }
    const float n = nonEmpty > 0 ? static_cast<float>(nonEmpty) : 1.f;
    w = c > 0 ? static_cast<float>(tot / (denom > 1e-300 ? denom : 1e-300)) / n : 0.f;
    table[k] = w;
  }
  if (sums == nullptr) return;
  if (k < bins) weighted[k] = static_cast<double>(w) * sums[k];
  __syncthreads();
  if (k == 0) {
    double total = 0.0;
    for (int j = 0; j < bins; ++j) total += weighted[j];
    loss[0] = static_cast<float>(total / tot * lossWeight);
    totOut[0] = static_cast<float>(tot);
  }
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
                                                                 static_cast<int>(bins), momentum, nullptr, 0.0, nullptr, nullptr);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return table;
}

namespace {

/// Blocks for a grid-stride kernel: `wanted`, at most as many as the device holds at once.
template <typename Kernel>
unsigned residentBlocks(Kernel kernel, int threads, size_t sharedBytes, int64_t wanted) {
  int perSm = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&perSm, kernel, threads, sharedBytes));
  const int64_t cap = std::max<int64_t>(1, static_cast<int64_t>(perSm) * at::cuda::getCurrentDeviceProperties()->multiProcessorCount);
  return static_cast<unsigned>(std::min(std::max<int64_t>(wanted, 1), cap));
}

/// Launches a GHM-C kernel: launch(Index, Vec4, wantedBlocks) with 16-byte steps when the rows allow
/// (C % 4 == 0, x and out 16-byte aligned) and 32-bit indices when the size allows; wantedBlocks is
/// one item per thread of `threads`-thread blocks.
template <typename F>
void launchClass(const at::Tensor& x, const void* out, int threads, F launch) {
  const int64_t C = x.size(1), total = x.numel();
  const bool vec4 = C % 4 == 0 && reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 == 0 && reinterpret_cast<uintptr_t>(out) % 16 == 0;
  const int64_t items = vec4 ? total / 4 : total;
  const int64_t wanted = (items + threads - 1) / threads;
  withIndex(total, [&](auto index) {
    if (vec4) launch(index, std::true_type{}, wanted);
    else launch(index, std::false_type{}, wanted);
  });
}

}  // namespace

GhmcStats ghmcStatsCuda(const at::Tensor& x, const at::Tensor& labels, const at::Tensor& valid, const at::Tensor& edges, int64_t bins) {
  const c10::cuda::CUDAGuard guard(x.device());
  TORCH_CHECK(bins >= 1 && bins <= kGhmcStatsMaxBins, "ghmcStatsCuda: 1 to ", kGhmcStatsMaxBins, " bins");
  const int64_t total = x.numel();
  const auto f64 = x.options().dtype(at::kDouble);
  GhmcStats out{at::empty({bins}, f64), at::empty({bins}, f64), at::empty({1}, f64)};
  // 256 threads for ≤ 16 bins, else 128: the private columns stay within 32 KiB of shared memory
  const int threads = bins <= 16 ? 256 : 128;
  const size_t shared = static_cast<size_t>(bins) * threads * (sizeof(float) + sizeof(unsigned));
  unsigned blocks = 1;
  at::Tensor partialCounts, partialSums, partialValid;
  const auto stream = at::cuda::getCurrentCUDAStream();
  launchClass(x, nullptr, threads, [&](auto index, auto vec4, int64_t wanted) {
    using Index = decltype(index);
    const auto kernel = classStatsKernel<decltype(vec4)::value, Index>;
    blocks = residentBlocks(kernel, threads, shared, wanted);
    // every block writes its entries
    partialCounts = at::empty({bins * blocks}, x.options().dtype(at::kInt));
    partialSums = at::empty({bins * blocks}, x.options());
    partialValid = at::empty({blocks}, x.options().dtype(at::kInt));
    kernel<<<blocks, threads, shared, stream>>>(x.data_ptr<float>(), labels.data_ptr<int64_t>(), valid.data_ptr<bool>(), edges.data_ptr<float>(),
                                                static_cast<int>(bins), static_cast<Index>(total), static_cast<Index>(x.size(1)),
                                                reinterpret_cast<unsigned*>(partialCounts.data_ptr<int32_t>()), partialSums.data_ptr<float>(),
                                                reinterpret_cast<unsigned*>(partialValid.data_ptr<int32_t>()));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  statsReduceKernel<<<1, 1024, 0, stream>>>(reinterpret_cast<const unsigned*>(partialCounts.data_ptr<int32_t>()), partialSums.data_ptr<float>(),
                                            reinterpret_cast<const unsigned*>(partialValid.data_ptr<int32_t>()), static_cast<int>(blocks),
                                            static_cast<int>(bins), out.counts.data_ptr<double>(), out.sums.data_ptr<double>(),
                                            out.validTotal.data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

GhmcFinish ghmcFinishCuda(const at::Tensor& counts, const at::Tensor& sums, const at::Tensor& tot, const at::Tensor& accSum, double momentum,
                          double lossWeight) {
  const c10::cuda::CUDAGuard guard(counts.device());
  const int64_t bins = counts.size(0);
  TORCH_CHECK(bins <= 1024, "ghmcFinishCuda: at most 1024 bins");
  const auto f32 = counts.options().dtype(at::kFloat);
  GhmcFinish out{at::empty({}, f32), at::empty({bins}, f32), at::empty({}, f32)};
  const auto c = counts.to(at::kDouble).contiguous(), s = sums.to(at::kDouble).contiguous(), t = tot.to(at::kDouble).reshape({1}).contiguous();
  tableKernel<<<1, 1024, 0, at::cuda::getCurrentCUDAStream()>>>(
      c.data_ptr<double>(), t.data_ptr<double>(), momentum > 0 ? accSum.data_ptr<double>() : nullptr, out.table.data_ptr<float>(),
      static_cast<int>(bins), momentum, s.data_ptr<double>(), lossWeight, out.loss.data_ptr<float>(), out.tot.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor ghmcCountsCuda(const at::Tensor& x, const at::Tensor& labels, const at::Tensor& valid, const at::Tensor& edges, int64_t bins) {
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t total = x.numel();
  return histogram(bins, x, [&](unsigned long long* counts) {
    if (total == 0) return;
    const ClassElement e{x.data_ptr<float>(), labels.data_ptr<int64_t>(), valid.data_ptr<bool>()};
    withIndex(total, [&](auto index) {
      using Index = decltype(index);
      countKernel<ClassElement, Index><<<blocksFor(total), kThreads, bins * sizeof(unsigned int), at::cuda::getCurrentCUDAStream()>>>(
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
  const size_t shared = (2 * bins + 1) * sizeof(float);
  launchClass(x, nullptr, kThreads, [&](auto index, auto vec4, int64_t wanted) {
    using Index = decltype(index);
    const auto kernel = classTermsKernel<decltype(vec4)::value, Index>;
    const unsigned blocks = residentBlocks(kernel, kThreads, shared, wanted);
    partial = at::empty({static_cast<int64_t>(blocks)}, x.options());  // every block writes its entry
    kernel<<<blocks, kThreads, shared, at::cuda::getCurrentCUDAStream()>>>(
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
  const size_t shared = (2 * bins + 1) * sizeof(float);
  launchClass(x, grad.data_ptr(), kThreads, [&](auto index, auto vec4, int64_t wanted) {
    using Index = decltype(index);
    const auto kernel = classGradKernel<decltype(vec4)::value, Index>;
    kernel<<<residentBlocks(kernel, kThreads, shared, wanted), kThreads, shared, at::cuda::getCurrentCUDAStream()>>>(
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
