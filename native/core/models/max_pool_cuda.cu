// The kernels of core/models/max_pool: max pooling over channels-last [N, H, W, C] storage, a thread per
// (output or input) position and 16-byte pack of channels, the window's argmax as a one-byte code.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <cstdint>

namespace onestage {

namespace {

constexpr uint8_t kNoArgmax = 255;  // no element above −∞ (and no NaN): LibTorch's argmax is the image's (0, 0)

template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

template <int V>
struct alignas(V) Codes {
  uint8_t v[V];
};

struct Geometry {
  int64_t n, h, w, c, oh, ow;
  int k, s, p;
};

template <typename T, int V>
__global__ void maxPoolForwardKernel(const T* __restrict__ x, T* __restrict__ y, uint8_t* __restrict__ codes, Geometry g, int64_t packs) {
  const int64_t cp = g.c / V;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < packs; i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t t = i;
    const int64_t pack = t % cp;
    t /= cp;
    const int64_t ow = t % g.ow;
    t /= g.ow;
    const int64_t oh = t % g.oh;
    const int64_t n = t / g.oh;
    const int64_t h0 = oh * g.s - g.p, w0 = ow * g.s - g.p;
    const int64_t hs = h0 < 0 ? 0 : h0, ws = w0 < 0 ? 0 : w0;
    const int64_t he = h0 + g.k < g.h ? h0 + g.k : g.h, we = w0 + g.k < g.w ? w0 + g.k : g.w;
    float best[V];
    uint8_t code[V];
#pragma unroll
    for (int v = 0; v < V; ++v) {
      best[v] = -__int_as_float(0x7f800000);  // −∞
      code[v] = kNoArgmax;
    }
    for (int64_t hh = hs; hh < he; ++hh)
      for (int64_t ww = ws; ww < we; ++ww) {
        const auto in = *reinterpret_cast<const Pack<T, V>*>(x + ((n * g.h + hh) * g.w + ww) * g.c + pack * V);
        const auto here = static_cast<uint8_t>((hh - h0) * g.k + (ww - w0));
#pragma unroll
        for (int v = 0; v < V; ++v) {
          const float val = static_cast<float>(in.v[v]);
          // LibTorch's test: a larger value or a NaN replaces the maximum (the first maximum stays)
          if (val > best[v] || val != val) {
            best[v] = val;
            code[v] = here;
          }
        }
      }
    Pack<T, V> out;
#pragma unroll
    for (int v = 0; v < V; ++v) out.v[v] = static_cast<T>(best[v]);
    const int64_t o = ((n * g.oh + oh) * g.ow + ow) * g.c + pack * V;
    *reinterpret_cast<Pack<T, V>*>(y + o) = out;
    if (codes != nullptr) {
      Codes<V> cs;
#pragma unroll
      for (int v = 0; v < V; ++v) cs.v[v] = code[v];
      *reinterpret_cast<Codes<V>*>(codes + o) = cs;
    }
  }
}

template <typename T, int V>
__global__ void maxPoolBackwardKernel(const T* __restrict__ gy, const uint8_t* __restrict__ codes, T* __restrict__ gx, Geometry g, int64_t packs) {
  const int64_t cp = g.c / V;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < packs; i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t t = i;
    const int64_t pack = t % cp;
    t /= cp;
    const int64_t w = t % g.w;
    t /= g.w;
    const int64_t h = t % g.h;
    const int64_t n = t / g.h;
    // the windows that hold (h, w), as LibTorch's p_start / p_end
    const int64_t phs = h + g.p < g.k ? 0 : (h + g.p - g.k) / g.s + 1;
    const int64_t phe = (h + g.p) / g.s + 1 < g.oh ? (h + g.p) / g.s + 1 : g.oh;
    const int64_t pws = w + g.p < g.k ? 0 : (w + g.p - g.k) / g.s + 1;
    const int64_t pwe = (w + g.p) / g.s + 1 < g.ow ? (w + g.p) / g.s + 1 : g.ow;
    const bool origin = h == 0 && w == 0;
    float acc[V];
#pragma unroll
    for (int v = 0; v < V; ++v) acc[v] = 0.f;
    for (int64_t ph = phs; ph < phe; ++ph)
      for (int64_t pw = pws; pw < pwe; ++pw) {
        const int64_t o = ((n * g.oh + ph) * g.ow + pw) * g.c + pack * V;
        const auto cs = *reinterpret_cast<const Codes<V>*>(codes + o);
        const auto gv = *reinterpret_cast<const Pack<T, V>*>(gy + o);
        const auto mine = static_cast<uint8_t>((h - (ph * g.s - g.p)) * g.k + (w - (pw * g.s - g.p)));
#pragma unroll
        for (int v = 0; v < V; ++v)
          if (cs.v[v] == mine || (origin && cs.v[v] == kNoArgmax)) acc[v] += static_cast<float>(gv.v[v]);
      }
    Pack<T, V> out;
#pragma unroll
    for (int v = 0; v < V; ++v) out.v[v] = static_cast<T>(acc[v]);
    *reinterpret_cast<Pack<T, V>*>(gx + ((n * g.h + h) * g.w + w) * g.c + pack * V) = out;
  }
}

unsigned blocksFor(int64_t packs, int threads) {
  const int64_t most = static_cast<int64_t>(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * 32;
  const int64_t need = (packs + threads - 1) / threads;
  return static_cast<unsigned>(need < most ? need : most);
}

}  // namespace

/// x [N, C, H, W] channels-last; codes [N, OH, OW, C] uint8 or undefined (not written). Returns y channels-last.
at::Tensor maxPoolForwardCuda(const at::Tensor& x, int64_t k, int64_t s, int64_t p, const at::Tensor& codes) {
  const c10::cuda::CUDAGuard guard(x.device());
  const Geometry g{x.size(0), x.size(2), x.size(3), x.size(1), (x.size(2) + 2 * p - k) / s + 1, (x.size(3) + 2 * p - k) / s + 1,
                   static_cast<int>(k), static_cast<int>(s), static_cast<int>(p)};
  auto y = at::empty({g.n, g.c, g.oh, g.ow}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "maxPoolForwardCuda", [&] {
    constexpr int V = 16 / sizeof(scalar_t);
    const int64_t packs = y.numel() / V;
    if (packs == 0) return;
    constexpr int threads = 256;
    maxPoolForwardKernel<scalar_t, V><<<blocksFor(packs, threads), threads, 0, at::cuda::getCurrentCUDAStream()>>>(
        x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), codes.defined() ? codes.data_ptr<uint8_t>() : nullptr, g, packs);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return y;
}

/// gy [N, C, OH, OW] channels-last, codes as written by the forward → ∂x [N, C, H, W] channels-last.
at::Tensor maxPoolBackwardCuda(const at::Tensor& gy, const at::Tensor& codes, int64_t height, int64_t width, int64_t k, int64_t s, int64_t p) {
  const c10::cuda::CUDAGuard guard(gy.device());
  const Geometry g{gy.size(0), height, width, gy.size(1), gy.size(2), gy.size(3), static_cast<int>(k), static_cast<int>(s), static_cast<int>(p)};
  auto gx = at::empty({g.n, g.c, g.h, g.w}, gy.options().memory_format(at::MemoryFormat::ChannelsLast));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, gy.scalar_type(), "maxPoolBackwardCuda", [&] {
    constexpr int V = 16 / sizeof(scalar_t);
    const int64_t packs = gx.numel() / V;
    if (packs == 0) return;
    constexpr int threads = 256;
    maxPoolBackwardKernel<scalar_t, V><<<blocksFor(packs, threads), threads, 0, at::cuda::getCurrentCUDAStream()>>>(
        gy.data_ptr<scalar_t>(), codes.data_ptr<uint8_t>(), gx.data_ptr<scalar_t>(), g, packs);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return gx;
}

}  // namespace onestage
