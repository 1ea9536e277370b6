// Frozen BatchNorm (running statistics) fused with the residual sum and the ReLU that follow it in
// ResNet blocks, for channels-last CUDA tensors: y = act(x·s + t [+ r]) with s = w / √(var + eps),
// t = b − mean·s per channel. Forward: one pass. Backward: one pass writing ∂x = g·s (and ∂r = g)
// with g = ∂y·[y > 0] (∂y: the sum of the output's two uses' gradients where the caller hands both;
// [y > 0] recomputed from x where no residual was added), and the per-channel sums Σg (∂b) and Σg·x̂ (∂w), x̂ = (x − mean)/√(var + eps),
// reduced in registers and shared memory, then atomically into float accumulators.
// Layout: [rows = N·H·W, C] contiguous (channels-last), C a multiple of the vector width; float
// arithmetic whatever the storage type (float, bf16, half).
// With no BatchNorm weight (BnParams::weight null) the same kernels are a convolution's epilogue:
// z = act(y + bias) forward; backward ∂y = ∂z·[z > 0] and Σ∂y (the bias's gradient), nothing else read.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <array>
#include <cstdlib>
#include <numeric>

namespace onestage {

namespace {

template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

struct BnParams {
  const float* weight;
  const float* bias;
  const float* mean;
  const float* var;
  float eps;
};

// weight null: a plain bias (scale 1, shift = bias, x̂ = x), the epilogue of a convolution
__device__ inline void channelAffine(const BnParams& p, int c, float& scale, float& shift, float& mean, float& invstd) {
  if (p.weight == nullptr) {
    scale = 1.f;
    shift = p.bias[c];
    mean = 0.f;
    invstd = 1.f;
    return;
  }
  // rounded operations (no contraction into a fused multiply-add): the backward recomputes the forward's
  // values from x (the ReLU's mask) and must get the same bits
  invstd = rsqrtf(__fadd_rn(p.var[c], p.eps));
  mean = p.mean[c];
  scale = __fmul_rn(p.weight[c], invstd);
  shift = __fsub_rn(p.bias[c], __fmul_rn(mean, scale));
}

/// x·s + t as one fused multiply-add, in the forward and where the backward recomputes it
__device__ inline float affine(float x, float scale, float shift) { return __fmaf_rn(x, scale, shift); }

template <typename T, int V>
__global__ void frozenBnForwardKernel(const T* __restrict__ x, const T* __restrict__ r, T* __restrict__ y, BnParams p, int64_t packs, int C, bool relu) {
  // a thread's channels repeat from pack to pack whenever the grid's stride is a multiple of C (the
  // launch arranges it for the usual widths): the per-channel scale and shift are computed once, not
  // reloaded (four parameter loads and a square root per element) for every pack
  int cached = -1;
  float scale[V], shift[V];
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < packs; i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int c0 = static_cast<int>((i * V) % C);
    if (c0 != cached) {
#pragma unroll
      for (int k = 0; k < V; ++k) {
        float mean, invstd;
        channelAffine(p, c0 + k, scale[k], shift[k], mean, invstd);
      }
      cached = c0;
    }
    const auto xv = reinterpret_cast<const Pack<T, V>*>(x)[i];
    Pack<T, V> rv;
    if (r) rv = reinterpret_cast<const Pack<T, V>*>(r)[i];
    Pack<T, V> out;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      float v = affine(static_cast<float>(xv.v[k]), scale[k], shift[k]);
      if (r) v = __fadd_rn(v, static_cast<float>(rv.v[k]));
      if (relu) v = v > 0.f ? v : 0.f;
      out.v[k] = static_cast<T>(v);
    }
    reinterpret_cast<Pack<T, V>*>(y)[i] = out;
  }
}

constexpr int kThreads = 256;  // per block of the backward: lanes along the channels × rows
constexpr int kMaxLanes = 32;  // threads along the channels (each V channels)

// Block (lanes, rows) with lanes = min(32, C / V): narrow layers (C 64: 8 lanes × 32 rows) keep every
// thread busy and a warp reads whole consecutive rows; wide ones take 32 lanes × 8 rows per block.
// gy2 (may be null): a second gradient of the output (its other use), summed with gy and rounded to T
// as autograd's sum of the two would be. The ReLU's mask: [y > 0] from the output y, or with y null
// recomputed from x (no residual: T(x·s + t) > 0, the forward's own rounding) — one stream fewer.
template <typename T, int V>
__global__ void frozenBnBackwardKernel(const T* __restrict__ gy, const T* __restrict__ gy2, const T* __restrict__ y, const T* __restrict__ x,
                                       T* __restrict__ gx, T* __restrict__ gr, BnParams p, int64_t rows, int C, bool relu,
                                       float* __restrict__ sumG, float* __restrict__ sumGx) {
  __shared__ float shG[kThreads * V];
  __shared__ float shGx[kThreads * V];
  const int lanes = blockDim.x;
  const int rowsPerBlock = blockDim.y;
  const int c0 = (blockIdx.x * lanes + threadIdx.x) * V;
  const bool active = c0 < C;
  const bool maskFromX = relu && y == nullptr;
  float accG[V], accGx[V], scale[V], shift[V], mean[V], invstd[V];
#pragma unroll
  for (int k = 0; k < V; ++k) {
    accG[k] = 0.f;
    accGx[k] = 0.f;
    if (active) channelAffine(p, c0 + k, scale[k], shift[k], mean[k], invstd[k]);
  }
  if (active) {
    for (int64_t row = blockIdx.y * static_cast<int64_t>(rowsPerBlock) + threadIdx.y; row < rows; row += static_cast<int64_t>(gridDim.y) * rowsPerBlock) {
      const int64_t at = (row * C + c0) / V;
      const auto gv = reinterpret_cast<const Pack<T, V>*>(gy)[at];
      Pack<T, V> gv2, xv, yv;
      if (gy2) gv2 = reinterpret_cast<const Pack<T, V>*>(gy2)[at];
      if (x) xv = reinterpret_cast<const Pack<T, V>*>(x)[at];
      if (relu && !maskFromX) yv = reinterpret_cast<const Pack<T, V>*>(y)[at];
      Pack<T, V> gxo, gro;
#pragma unroll
      for (int k = 0; k < V; ++k) {
        float g = static_cast<float>(gv.v[k]);
        if (gy2) g = static_cast<float>(static_cast<T>(__fadd_rn(g, static_cast<float>(gv2.v[k]))));
        if (relu) {
          const float out = maskFromX ? static_cast<float>(static_cast<T>(affine(static_cast<float>(xv.v[k]), scale[k], shift[k])))
                                      : static_cast<float>(yv.v[k]);
          if (!(out > 0.f)) g = 0.f;
        }
        accG[k] += g;
        if (x) accGx[k] += g * (static_cast<float>(xv.v[k]) - mean[k]) * invstd[k];
        gxo.v[k] = static_cast<T>(g * scale[k]);
        gro.v[k] = static_cast<T>(g);
      }
      if (gx) reinterpret_cast<Pack<T, V>*>(gx)[at] = gxo;
      if (gr) reinterpret_cast<Pack<T, V>*>(gr)[at] = gro;
    }
  }
  const int width = lanes * V;
#pragma unroll
  for (int k = 0; k < V; ++k) {
    shG[threadIdx.y * width + threadIdx.x * V + k] = accG[k];
    shGx[threadIdx.y * width + threadIdx.x * V + k] = accGx[k];
  }
  __syncthreads();
  // the block's column sums: one thread per channel of the block (width ≤ 256 channels)
  const int t = threadIdx.y * lanes + threadIdx.x;
  if (t < width && blockIdx.x * width + t < C) {
    float a = 0.f, b = 0.f;
    for (int j = 0; j < rowsPerBlock; ++j) {
      a += shG[j * width + t];
      b += shGx[j * width + t];
    }
    atomicAdd(sumG + blockIdx.x * width + t, a);
    if (sumGx) atomicAdd(sumGx + blockIdx.x * width + t, b);
  }
}

BnParams paramsOf(const at::Tensor& w, const at::Tensor& b, const at::Tensor& m, const at::Tensor& v, double eps) {
  auto ptr = [](const at::Tensor& t) { return t.defined() ? t.data_ptr<float>() : nullptr; };
  return {ptr(w), b.data_ptr<float>(), ptr(m), ptr(v), static_cast<float>(eps)};
}

int multiprocessors() { return at::cuda::getCurrentDeviceProperties()->multiProcessorCount; }

/// ONESTAGE_FROZEN_BN_WAVES=k (1…64): the backward's grid as k waves of resident blocks; 0 when unset (one wave).
int wavesAsked() {
  const char* v = std::getenv("ONESTAGE_FROZEN_BN_WAVES");
  if (v == nullptr || *v == 0) return 0;
  const int k = std::atoi(v);
  TORCH_CHECK(k >= 1 && k <= 64, "ONESTAGE_FROZEN_BN_WAVES must be an integer in 1…64, not '", v, "'");
  return k;
}

}  // namespace

/// x (and r) [N, C, H, W] channels-last contiguous; w, b, m, v float32 [C] contiguous; C % (16 / element size) == 0.
at::Tensor frozenBnForwardCuda(const at::Tensor& x, const at::Tensor& r, const at::Tensor& w, const at::Tensor& b, const at::Tensor& m,
                               const at::Tensor& v, double eps, bool relu) {
  const c10::cuda::CUDAGuard guard(x.device());
  auto y = at::empty_like(x, at::MemoryFormat::ChannelsLast);
  const int C = static_cast<int>(x.size(1));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "frozenBnForwardCuda", [&] {
    constexpr int V = 16 / sizeof(scalar_t);
    const int64_t packs = x.numel() / V;
    if (packs == 0) return;
    const int threads = 256;
    int64_t blocks = std::min<int64_t>((packs + threads - 1) / threads, static_cast<int64_t>(multiprocessors()) * 16);
    // a grid stride that is a multiple of C keeps each thread on the same channels (see the kernel)
    const int64_t perBlock = static_cast<int64_t>(threads) * V;
    const int64_t period = C / std::gcd<int64_t>(C, perBlock);  // blocks per whole number of rows
    if (blocks > period) blocks -= blocks % period;
    frozenBnForwardKernel<scalar_t, V><<<static_cast<unsigned>(blocks), threads, 0, at::cuda::getCurrentCUDAStream()>>>(
        x.data_ptr<scalar_t>(), r.defined() ? r.data_ptr<scalar_t>() : nullptr, y.data_ptr<scalar_t>(), paramsOf(w, b, m, v, eps), packs, C, relu);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return y;
}

namespace {

/// The backward pass over gy [rows, C] (channels-last); gy2, y, gx, gr, x and sumGx may be undefined (not read / written; y
/// undefined with relu: the mask from x).
void launchBackward(const at::Tensor& gy, const at::Tensor& gy2, const at::Tensor& y, const at::Tensor& x, const at::Tensor& gx, const at::Tensor& gr,
                    const BnParams& params, bool relu, const at::Tensor& sumG, const at::Tensor& sumGx) {
  const int64_t C = gy.size(1);
  const int64_t rows = gy.numel() / std::max<int64_t>(C, 1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, gy.scalar_type(), "frozenBnBackwardCuda", [&] {
    constexpr int V = 16 / sizeof(scalar_t);
    if (rows == 0) return;
    const int64_t lanes = std::min<int64_t>(kMaxLanes, C / V);
    const int64_t rowsPerBlock = kThreads / lanes;
    const int64_t gridX = (C / V + lanes - 1) / lanes;
    // blocks: one wave of as many as fit on the multiprocessors at once (ONESTAGE_FROZEN_BN_WAVES=k: k waves, read at every
    // launch for comparisons) — each over many rows: few per-block reductions and atomics, no partial last wave. The
    // twelfth session's A/B on an H100 (RetinaNet-50 bf16 b8): 1 wave 376.7/379.3 img/s, 2 waves 376.6/376.5, the
    // earlier 8 blocks per multiprocessor 370.6/367.5
    static const int resident = [] {
      int n = 0;
      C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, frozenBnBackwardKernel<scalar_t, V>, kThreads, 0));
      return std::max(n, 1);
    }();
    const int64_t perSm = static_cast<int64_t>(std::max(wavesAsked(), 1)) * resident;
    const int64_t want = std::max<int64_t>(1, static_cast<int64_t>(multiprocessors()) * perSm / gridX);
    const int64_t gridY = std::min<int64_t>(want, (rows + rowsPerBlock - 1) / rowsPerBlock);
    const dim3 grid(static_cast<unsigned>(gridX), static_cast<unsigned>(std::min<int64_t>(gridY, 65535)));
    const dim3 block(static_cast<unsigned>(lanes), static_cast<unsigned>(rowsPerBlock));
    auto ptr = [](const at::Tensor& t) { return t.defined() ? t.data_ptr<scalar_t>() : nullptr; };
    frozenBnBackwardKernel<scalar_t, V><<<grid, block, 0, at::cuda::getCurrentCUDAStream()>>>(
        gy.data_ptr<scalar_t>(), ptr(gy2), ptr(y), ptr(x), ptr(gx), ptr(gr), params, rows, static_cast<int>(C), relu, sumG.data_ptr<float>(),
        sumGx.defined() ? sumGx.data_ptr<float>() : nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace

/// Returns {∂x, ∂r (when wantResidual), Σg [C], Σg·x̂ [C]} for the output's gradient gy (+ gy2, the gradient of its second use, when
/// defined). y undefined: the ReLU's mask recomputed from x (only without a residual).
std::vector<at::Tensor> frozenBnBackwardCuda(const at::Tensor& gy, const at::Tensor& gy2, const at::Tensor& y, const at::Tensor& x, const at::Tensor& w,
                                             const at::Tensor& b, const at::Tensor& m, const at::Tensor& v, double eps, bool relu, bool wantResidual) {
  TORCH_CHECK(!(relu && !y.defined() && wantResidual), "frozenBnBackwardCuda: the ReLU's mask needs the output where a residual was added");
  const c10::cuda::CUDAGuard guard(x.device());
  auto gx = at::empty_like(x, at::MemoryFormat::ChannelsLast);
  at::Tensor gr = wantResidual ? at::empty_like(x, at::MemoryFormat::ChannelsLast) : at::Tensor();
  auto sums = at::zeros({2, x.size(1)}, x.options().dtype(at::kFloat));
  launchBackward(gy, gy2, y, x, gx, gr, paramsOf(w, b, m, v, eps), relu, sums[0], sums[1]);
  return {gx, gr, sums[0], sums[1]};
}

namespace {

/// One convolution's fold: weight w (float32, n elements, out channels outermost in both layouts: K each) and BatchNorm p.
struct FoldJob {
  const float* w;
  void* wf;  // n elements of T
  void* bf;  // O elements of T
  BnParams p;
  int64_t n, K;
};
constexpr int kFoldJobs = 24;  // per launch: the jobs travel in the kernel's parameters (24 × 80 bytes)
struct FoldJobs {
  FoldJob job[kFoldJobs];
};

/// Job blockIdx.y: w'[o, …] = T(w[o, …]·s[o]), b'[o] = T(t[o]) with the forward kernel's per-channel constants.
template <typename T>
__global__ void foldBatchNormKernel(FoldJobs jobs) {
  const FoldJob& j = jobs.job[blockIdx.y];
  const auto* __restrict__ w = j.w;
  auto* __restrict__ wf = static_cast<T*>(j.wf);
  auto* __restrict__ bf = static_cast<T*>(j.bf);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < j.n; i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int o = static_cast<int>(i / j.K);
    float scale, shift, mean, invstd;
    channelAffine(j.p, o, scale, shift, mean, invstd);
    wf[i] = static_cast<T>(__fmul_rn(w[i], scale));
    if (i % j.K == 0) bf[o] = static_cast<T>(shift);
  }
}

}  // namespace

/// Frozen BatchNorms folded into the convolutions before them, for inference, in a few launches (up to 24 convolutions each):
/// per entry {w [O, I, kh, kw], BatchNorm weight, bias, mean, var [O]} and its eps (float32, contiguous; w dense, contiguous or channels-last,
/// all on one device) → {w·s in `type` with w's strides, t [O] in `type`}, s and t the forward kernel's per-channel constants,
/// each product rounded once.
std::vector<std::pair<at::Tensor, at::Tensor>> foldBatchNormsCuda(const std::vector<std::array<at::Tensor, 5>>& entries, const std::vector<double>& eps,
                                                                  at::ScalarType type) {
  std::vector<std::pair<at::Tensor, at::Tensor>> out;
  TORCH_CHECK(eps.size() == entries.size(), "foldBatchNormsCuda: an eps per entry");
  if (entries.empty()) return out;
  const c10::cuda::CUDAGuard guard(entries.front()[0].device());
  out.reserve(entries.size());
  for (const auto& e : entries) {
    const auto& w = e[0];
    TORCH_CHECK(w.scalar_type() == at::kFloat && w.dim() == 4 && (w.is_contiguous() || w.is_contiguous(at::MemoryFormat::ChannelsLast)),
                "foldBatchNormsCuda: a dense float32 [O, I, kh, kw] weight");
    out.emplace_back(at::empty_like(w, w.options().dtype(type)), at::empty({w.size(0)}, w.options().dtype(type)));
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, type, "foldBatchNormsCuda", [&] {
    for (size_t first = 0; first < entries.size(); first += kFoldJobs) {
      FoldJobs jobs{};
      int count = 0;
      int64_t largest = 0;
      for (size_t i = first; i < std::min(entries.size(), first + kFoldJobs); ++i) {
        const auto& e = entries[i];
        const int64_t n = e[0].numel();
        if (n == 0) continue;
        jobs.job[count++] = {e[0].data_ptr<float>(), out[i].first.data_ptr<scalar_t>(), out[i].second.data_ptr<scalar_t>(), paramsOf(e[1], e[2], e[3], e[4], eps[i]),
                             n, n / e[0].size(0)};
        largest = std::max(largest, n);
      }
      if (count == 0) continue;
      const int threads = 256;
      const int64_t blocks = std::min<int64_t>((largest + threads - 1) / threads, std::max<int64_t>(1, static_cast<int64_t>(multiprocessors()) * 8 / count));
      foldBatchNormKernel<scalar_t><<<dim3(static_cast<unsigned>(blocks), static_cast<unsigned>(count)), threads, 0, at::cuda::getCurrentCUDAStream()>>>(jobs);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return out;
}

/// A convolution's epilogue: act(y + bias) for y [N, C, H, W] channels-last contiguous, bias float32 [C].
at::Tensor biasActForwardCuda(const at::Tensor& y, const at::Tensor& bias, bool relu) {
  return frozenBnForwardCuda(y, at::Tensor(), at::Tensor(), bias, at::Tensor(), at::Tensor(), 0.0, relu);
}

/// Its backward from ∂z and z = act(y + bias): {∂y (undefined without the ReLU: ∂z itself), ∂bias = Σ∂y [C] float32}.
std::vector<at::Tensor> biasActBackwardCuda(const at::Tensor& gz, const at::Tensor& z, const at::Tensor& bias, bool relu) {
  const c10::cuda::CUDAGuard guard(gz.device());
  at::Tensor gy = relu ? at::empty_like(gz, at::MemoryFormat::ChannelsLast) : at::Tensor();
  auto sum = at::zeros({gz.size(1)}, gz.options().dtype(at::kFloat));
  launchBackward(gz, at::Tensor(), relu ? z : at::Tensor(), at::Tensor(), gy, at::Tensor(), paramsOf(at::Tensor(), bias, at::Tensor(), at::Tensor(), 0.0), relu, sum,
                 at::Tensor());
  return {gy, sum};
}

}  // namespace onestage
