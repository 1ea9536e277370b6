// Frozen BatchNorm (running statistics) fused with the residual sum and the ReLU that follow it in
// ResNet blocks, for channels-last CUDA tensors: y = act(x·s + t [+ r]) with s = w / √(var + eps),
// t = b − mean·s per channel. Forward: one pass. Backward: one pass writing ∂x = g·s (and ∂r = g)
// with g = ∂y·[y > 0], and the per-channel sums Σg (∂b) and Σg·x̂ (∂w), x̂ = (x − mean)/√(var + eps),
// reduced in registers and shared memory, then atomically into float accumulators.
// Layout: [rows = N·H·W, C] contiguous (channels-last), C a multiple of the vector width; float
// arithmetic whatever the storage type (float, bf16, half).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

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

__device__ inline void channelAffine(const BnParams& p, int c, float& scale, float& shift, float& mean, float& invstd) {
  invstd = rsqrtf(p.var[c] + p.eps);
  mean = p.mean[c];
  scale = p.weight[c] * invstd;
  shift = p.bias[c] - mean * scale;
}

template <typename T, int V>
__global__ void frozenBnForwardKernel(const T* __restrict__ x, const T* __restrict__ r, T* __restrict__ y, BnParams p, int64_t packs, int C, bool relu) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < packs; i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int c0 = static_cast<int>((i * V) % C);
    const auto xv = reinterpret_cast<const Pack<T, V>*>(x)[i];
    Pack<T, V> rv;
    if (r) rv = reinterpret_cast<const Pack<T, V>*>(r)[i];
    Pack<T, V> out;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      float scale, shift, mean, invstd;
      channelAffine(p, c0 + k, scale, shift, mean, invstd);
      float v = static_cast<float>(xv.v[k]) * scale + shift;
      if (r) v += static_cast<float>(rv.v[k]);
      if (relu) v = v > 0.f ? v : 0.f;
      out.v[k] = static_cast<T>(v);
    }
    reinterpret_cast<Pack<T, V>*>(y)[i] = out;
  }
}

constexpr int kLanes = 32;  // threads along the channels (each V channels)
constexpr int kRows = 8;    // threads along the rows

template <typename T, int V>
__global__ void frozenBnBackwardKernel(const T* __restrict__ gy, const T* __restrict__ y, const T* __restrict__ x, T* __restrict__ gx,
                                       T* __restrict__ gr, BnParams p, int64_t rows, int C, bool relu, float* __restrict__ sumG,
                                       float* __restrict__ sumGx) {
  __shared__ float shG[kRows][kLanes * V];
  __shared__ float shGx[kRows][kLanes * V];
  const int c0 = (blockIdx.x * kLanes + threadIdx.x) * V;
  const bool active = c0 < C;
  float accG[V], accGx[V], scale[V], mean[V], invstd[V];
#pragma unroll
  for (int k = 0; k < V; ++k) {
    accG[k] = 0.f;
    accGx[k] = 0.f;
    float shift;
    if (active) channelAffine(p, c0 + k, scale[k], shift, mean[k], invstd[k]);
  }
  if (active) {
    for (int64_t row = blockIdx.y * static_cast<int64_t>(kRows) + threadIdx.y; row < rows; row += static_cast<int64_t>(gridDim.y) * kRows) {
      const int64_t at = (row * C + c0) / V;
      const auto gv = reinterpret_cast<const Pack<T, V>*>(gy)[at];
      const auto xv = reinterpret_cast<const Pack<T, V>*>(x)[at];
      Pack<T, V> yv;
      if (relu) yv = reinterpret_cast<const Pack<T, V>*>(y)[at];
      Pack<T, V> gxo, gro;
#pragma unroll
      for (int k = 0; k < V; ++k) {
        float g = static_cast<float>(gv.v[k]);
        if (relu && !(static_cast<float>(yv.v[k]) > 0.f)) g = 0.f;
        accG[k] += g;
        accGx[k] += g * (static_cast<float>(xv.v[k]) - mean[k]) * invstd[k];
        gxo.v[k] = static_cast<T>(g * scale[k]);
        gro.v[k] = static_cast<T>(g);
      }
      reinterpret_cast<Pack<T, V>*>(gx)[at] = gxo;
      if (gr) reinterpret_cast<Pack<T, V>*>(gr)[at] = gro;
    }
  }
#pragma unroll
  for (int k = 0; k < V; ++k) {
    shG[threadIdx.y][threadIdx.x * V + k] = accG[k];
    shGx[threadIdx.y][threadIdx.x * V + k] = accGx[k];
  }
  __syncthreads();
  if (threadIdx.y == 0 && active) {
#pragma unroll
    for (int k = 0; k < V; ++k) {
      float a = 0.f, b = 0.f;
      for (int j = 0; j < kRows; ++j) {
        a += shG[j][threadIdx.x * V + k];
        b += shGx[j][threadIdx.x * V + k];
      }
      atomicAdd(sumG + c0 + k, a);
      atomicAdd(sumGx + c0 + k, b);
    }
  }
}

BnParams paramsOf(const at::Tensor& w, const at::Tensor& b, const at::Tensor& m, const at::Tensor& v, double eps) {
  return {w.data_ptr<float>(), b.data_ptr<float>(), m.data_ptr<float>(), v.data_ptr<float>(), static_cast<float>(eps)};
}

int multiprocessors() { return at::cuda::getCurrentDeviceProperties()->multiProcessorCount; }

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
    const int64_t blocks = std::min<int64_t>((packs + threads - 1) / threads, static_cast<int64_t>(multiprocessors()) * 16);
    frozenBnForwardKernel<scalar_t, V><<<static_cast<unsigned>(blocks), threads, 0, at::cuda::getCurrentCUDAStream()>>>(
        x.data_ptr<scalar_t>(), r.defined() ? r.data_ptr<scalar_t>() : nullptr, y.data_ptr<scalar_t>(), paramsOf(w, b, m, v, eps), packs, C, relu);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return y;
}

/// Returns {∂x, ∂r (when wantResidual), Σg [C], Σg·x̂ [C]}.
std::vector<at::Tensor> frozenBnBackwardCuda(const at::Tensor& gy, const at::Tensor& y, const at::Tensor& x, const at::Tensor& w, const at::Tensor& b,
                                             const at::Tensor& m, const at::Tensor& v, double eps, bool relu, bool wantResidual) {
  const c10::cuda::CUDAGuard guard(x.device());
  auto gx = at::empty_like(x, at::MemoryFormat::ChannelsLast);
  at::Tensor gr = wantResidual ? at::empty_like(x, at::MemoryFormat::ChannelsLast) : at::Tensor();
  const int64_t C = x.size(1);
  auto sums = at::zeros({2, C}, x.options().dtype(at::kFloat));
  const int64_t rows = x.numel() / std::max<int64_t>(C, 1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "frozenBnBackwardCuda", [&] {
    constexpr int V = 16 / sizeof(scalar_t);
    if (rows == 0) return;
    const int64_t gridX = (C + kLanes * V - 1) / (kLanes * V);
    const int64_t want = std::max<int64_t>(1, static_cast<int64_t>(multiprocessors()) * 8 / gridX);
    const int64_t gridY = std::min<int64_t>(want, (rows + kRows - 1) / kRows);
    const dim3 grid(static_cast<unsigned>(gridX), static_cast<unsigned>(std::min<int64_t>(gridY, 65535)));
    const dim3 block(kLanes, kRows);
    frozenBnBackwardKernel<scalar_t, V><<<grid, block, 0, at::cuda::getCurrentCUDAStream()>>>(
        gy.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), gx.data_ptr<scalar_t>(), wantResidual ? gr.data_ptr<scalar_t>() : nullptr,
        paramsOf(w, b, m, v, eps), rows, static_cast<int>(C), relu, sums[0].data_ptr<float>(), sums[1].data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {gx, gr, sums[0], sums[1]};
}

}  // namespace onestage
