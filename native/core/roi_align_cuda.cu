// CUDA RoIAlign forward and backward (roi_align.cpp's autograd function) over several feature maps
// at once (the FPN levels of both views: one launch each way): one thread per output element
// [map, roi, channel, ph, pw] averaging S×S bilinear samples, and the backward scattering each
// output gradient to its 4·S·S feature cells with atomicAdd into one float32 buffer for all maps.
// The arithmetic is roi_align.cpp's (coordinates in double, torchvision's bilinear_interpolate rules,
// float accumulation); maps are read through their strides (NCHW or channels-last, no copy) in
// float32, float16 or bfloat16; the output and its gradient are float32. Forward threads run in the
// maps' order (channels fastest for channels-last maps), so that neighbouring threads read
// neighbouring memory; backward threads always run channels fastest (see roiAlignBackwardCuda).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <vector>

namespace onestage {

namespace {

constexpr int kThreads = 256;
constexpr int kMaxMaps = 32;  // roi_align.h's kRoiAlignMaxMaps

/// Per map: data (forward), start of its gradient in the float buffer (backward), element strides
/// (of the map forward, of its dense gradient backward), size and spatial scale.
struct MapTable {
  const void* data[kMaxMaps];
  int64_t gradOffset[kMaxMaps];
  int64_t sB[kMaxMaps], sC[kMaxMaps], sH[kMaxMaps], sW[kMaxMaps];
  int H[kMaxMaps], W[kMaxMaps];
  double scale[kMaxMaps];
};

struct RoiGeometry {
  int64_t R;
  int B, C, PH, PW, S;
  bool aligned;
  /// The output (and its gradient) is the mean over the PH × PW bins: [M, R, C].
  bool mean;
};

/// One bin of one channel of one RoI of one map.
struct Cell {
  int m, c, ph, pw;
  int64_t r;
};

/// Output element i's coordinates, in the threads' order: [m, r, ph, pw, c] with channels fastest
/// (ChannelsLast) or [m, r, c, ph, pw]. Index: int32_t when the element count allows (64-bit
/// division is emulated on the GPU and was most of the kernels' arithmetic).
template <bool ChannelsLast, typename Index>
struct Element {
  int m, c, ph, pw;
  int64_t r;
  __device__ Element(Index i, const RoiGeometry& g) {
    if (ChannelsLast) {
      c = static_cast<int>(i % g.C);
      i /= g.C;
      pw = static_cast<int>(i % g.PW);
      i /= g.PW;
      ph = static_cast<int>(i % g.PH);
      i /= g.PH;
    } else {
      pw = static_cast<int>(i % g.PW);
      i /= g.PW;
      ph = static_cast<int>(i % g.PH);
      i /= g.PH;
      c = static_cast<int>(i % g.C);
      i /= g.C;
    }
    r = i % static_cast<Index>(g.R);
    m = static_cast<int>(i / static_cast<Index>(g.R));
  }
};

/// One axis of torchvision's bilinear_interpolate: false when the point is outside [−1, size].
__device__ inline bool axisSample(double v, int size, int& low, int& high, double& wLow, double& wHigh) {
  if (v < -1.0 || v > static_cast<double>(size)) return false;
  if (v < 0.0) v = 0.0;
  low = static_cast<int>(floor(v));
  if (low >= size - 1) {
    low = high = size - 1;
    v = static_cast<double>(low);
  } else {
    high = low + 1;
  }
  wHigh = v - low;
  wLow = 1.0 - wHigh;
  return true;
}

/// Visits the bilinear corners of every sample of element e: visit(y, x, weight), weights not yet
/// divided by S².
template <typename E, typename Visit>
__device__ inline void forEachCorner(const E& e, const float* __restrict__ rois, const MapTable& t, const RoiGeometry& g,
                                    Visit visit) {
  const float* roi = rois + 5 * e.r;
  const double scale = t.scale[e.m], offset = g.aligned ? 0.5 : 0.0;
  const int H = t.H[e.m], W = t.W[e.m];
  const double x0 = static_cast<double>(roi[1]) * scale - offset;
  const double y0 = static_cast<double>(roi[2]) * scale - offset;
  double w = static_cast<double>(roi[3]) * scale - offset - x0;
  double h = static_cast<double>(roi[4]) * scale - offset - y0;
  if (!g.aligned) {
    w = w < 1.0 ? 1.0 : w;
    h = h < 1.0 ? 1.0 : h;
  }
  const double binW = w / g.PW, binH = h / g.PH;
  for (int iy = 0; iy < g.S; ++iy) {
    const double y = y0 + binH * (e.ph + (iy + 0.5) / g.S);
    int yl, yh;
    double wyl, wyh;
    if (!axisSample(y, H, yl, yh, wyl, wyh)) continue;
    for (int ix = 0; ix < g.S; ++ix) {
      const double x = x0 + binW * (e.pw + (ix + 0.5) / g.S);
      int xl, xh;
      double wxl, wxh;
      if (!axisSample(x, W, xl, xh, wxl, wxh)) continue;
      visit(yl, xl, static_cast<float>(wyl * wxl));
      visit(yl, xh, static_cast<float>(wyl * wxh));
      visit(yh, xl, static_cast<float>(wyh * wxl));
      visit(yh, xh, static_cast<float>(wyh * wxh));
    }
  }
}

/// Element e's batch index, clamped into [0, B).
__device__ inline int64_t batchOf(const float* __restrict__ rois, int64_t r, int B) {
  const int b = static_cast<int>(rois[5 * r]);
  return b < 0 ? 0 : (b >= B ? B - 1 : b);
}

template <typename T, bool ChannelsLast, typename Index>
__global__ void roiAlignForwardKernel(MapTable t, const float* __restrict__ rois, float* __restrict__ out, Index total, RoiGeometry g) {
  for (Index i = blockIdx.x * static_cast<Index>(blockDim.x) + threadIdx.x; i < total; i += static_cast<Index>(gridDim.x) * blockDim.x) {
    const Element<ChannelsLast, Index> e(i, g);
    const T* f = static_cast<const T*>(t.data[e.m]);
    const T* plane = f + batchOf(rois, e.r, g.B) * t.sB[e.m] + e.c * t.sC[e.m];
    const int64_t sH = t.sH[e.m], sW = t.sW[e.m];
    float sum = 0.f;
    forEachCorner(e, rois, t, g, [&](int y, int x, float w) { sum += w * static_cast<float>(plane[y * sH + x * sW]); });
    out[i] = sum / static_cast<float>(g.S * g.S);
  }
}

/// The mean over the bins: one thread per [m, r, c] (channels fastest), each bin averaged over its
/// samples first as in roiAlignForwardKernel, then the bins summed and divided by PH · PW.
template <typename T, typename Index>
__global__ void roiAlignMeanForwardKernel(MapTable t, const float* __restrict__ rois, float* __restrict__ out, Index total, RoiGeometry g) {
  for (Index i = blockIdx.x * static_cast<Index>(blockDim.x) + threadIdx.x; i < total; i += static_cast<Index>(gridDim.x) * blockDim.x) {
    Cell e;
    e.c = static_cast<int>(i % g.C);
    const Index rest = i / g.C;
    e.r = rest % static_cast<Index>(g.R);
    e.m = static_cast<int>(rest / static_cast<Index>(g.R));
    const T* f = static_cast<const T*>(t.data[e.m]);
    const T* plane = f + batchOf(rois, e.r, g.B) * t.sB[e.m] + e.c * t.sC[e.m];
    const int64_t sH = t.sH[e.m], sW = t.sW[e.m];
    float total = 0.f;
    for (e.ph = 0; e.ph < g.PH; ++e.ph)
      for (e.pw = 0; e.pw < g.PW; ++e.pw) {
        float sum = 0.f;
        forEachCorner(e, rois, t, g, [&](int y, int x, float w) { sum += w * static_cast<float>(plane[y * sH + x * sW]); });
        total += sum / static_cast<float>(g.S * g.S);
      }
    out[i] = total / static_cast<float>(g.PH * g.PW);
  }
}

template <typename Index>
__global__ void roiAlignBackwardKernel(const float* __restrict__ grad, const float* __restrict__ rois, float* __restrict__ gf, Index total, MapTable t,
                                       RoiGeometry g) {
  for (Index i = blockIdx.x * static_cast<Index>(blockDim.x) + threadIdx.x; i < total; i += static_cast<Index>(gridDim.x) * blockDim.x) {
    const Element<true, Index> e(i, g);
    const float go = g.mean ? grad[(e.m * static_cast<int64_t>(g.R) + e.r) * g.C + e.c] / static_cast<float>(g.S * g.S * g.PH * g.PW)
                            : grad[i] / static_cast<float>(g.S * g.S);
    if (go == 0.f) continue;
    float* plane = gf + t.gradOffset[e.m] + batchOf(rois, e.r, g.B) * t.sB[e.m] + e.c * t.sC[e.m];
    const int64_t sH = t.sH[e.m], sW = t.sW[e.m];
    forEachCorner(e, rois, t, g, [&](int y, int x, float w) { atomicAdd(plane + y * sH + x * sW, go * w); });
  }
}

/// Runs launch(Index{}) with 32-bit indices when `total` (plus a grid stride) fits.
template <typename F>
void withIndex(int64_t total, F launch) {
  if (total < (int64_t{1} << 30)) launch(int32_t{0});
  else launch(int64_t{0});
}

unsigned blocksFor(int64_t total) {
  const int64_t b = (total + kThreads - 1) / kThreads;
  return static_cast<unsigned>(b < 65535 * 8 ? (b < 1 ? 1 : b) : 65535 * 8);
}

RoiGeometry geometry(int64_t M, int64_t R, const std::vector<int64_t>& firstShape, int64_t PH, int64_t PW, int64_t S, bool aligned, bool mean) {
  TORCH_CHECK(M >= 1 && M <= kMaxMaps, "roiAlign: 1 to ", kMaxMaps, " maps in one call");
  return RoiGeometry{R, static_cast<int>(firstShape[0]), static_cast<int>(firstShape[1]), static_cast<int>(PH), static_cast<int>(PW), static_cast<int>(S),
                     aligned, mean};
}

}  // namespace

at::Tensor roiAlignForwardCuda(at::TensorList maps, const at::Tensor& rois, const std::vector<double>& scales, int64_t PH, int64_t PW, int64_t S,
                               bool aligned, bool mean) {
  const c10::cuda::CUDAGuard guard(maps[0].device());
  const int64_t M = static_cast<int64_t>(maps.size()), R = rois.size(0), C = maps[0].size(1);
  const RoiGeometry g = geometry(M, R, maps[0].sizes().vec(), PH, PW, S, aligned, mean);
  MapTable t{};
  for (int64_t m = 0; m < M; ++m) {
    t.data[m] = maps[m].data_ptr();
    t.sB[m] = maps[m].stride(0);
    t.sC[m] = maps[m].stride(1);
    t.sH[m] = maps[m].stride(2);
    t.sW[m] = maps[m].stride(3);
    t.H[m] = static_cast<int>(maps[m].size(2));
    t.W[m] = static_cast<int>(maps[m].size(3));
    t.scale[m] = scales[m];
  }
  const bool channelsLastOrder = C > 1 && maps[0].is_contiguous(at::MemoryFormat::ChannelsLast) && !maps[0].is_contiguous();
  const auto f32 = maps[0].options().dtype(at::kFloat);
  if (mean) {
    auto out = at::empty({M, R, C}, f32);
    const int64_t total = out.numel();
    if (total > 0)
      AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16, maps[0].scalar_type(), "roiAlignMeanForward", [&] {
        withIndex(total, [&](auto index) {
          using Index = decltype(index);
          roiAlignMeanForwardKernel<scalar_t, Index><<<blocksFor(total), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
              t, rois.data_ptr<float>(), out.data_ptr<float>(), static_cast<Index>(total), g);
        });
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    return out;
  }
  auto out = channelsLastOrder ? at::empty({M, R, PH, PW, C}, f32) : at::empty({M, R, C, PH, PW}, f32);
  const int64_t total = out.numel();
  if (total > 0)
    AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16, maps[0].scalar_type(), "roiAlignForward", [&] {
      withIndex(total, [&](auto index) {
        using Index = decltype(index);
        const auto stream = at::cuda::getCurrentCUDAStream();
        if (channelsLastOrder)
          roiAlignForwardKernel<scalar_t, true, Index><<<blocksFor(total), kThreads, 0, stream>>>(t, rois.data_ptr<float>(), out.data_ptr<float>(),
                                                                                                  static_cast<Index>(total), g);
        else
          roiAlignForwardKernel<scalar_t, false, Index><<<blocksFor(total), kThreads, 0, stream>>>(t, rois.data_ptr<float>(), out.data_ptr<float>(),
                                                                                                   static_cast<Index>(total), g);
      });
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  return channelsLastOrder ? out.permute({0, 1, 4, 2, 3}) : out;
}

std::vector<at::Tensor> roiAlignBackwardCuda(const at::Tensor& grad, const at::Tensor& rois, const std::vector<int64_t>& shapes,
                                             const at::TensorOptions& mapOptions, const std::vector<double>& scales, int64_t PH, int64_t PW, int64_t S,
                                             bool aligned, bool mean) {
  const c10::cuda::CUDAGuard guard(grad.device());
  const int64_t M = grad.size(0), R = grad.size(1);
  const RoiGeometry g = geometry(M, R, shapes, PH, PW, S, aligned, mean);
  // The gradients of all maps in one float32 buffer, each dense channels-last whatever the maps'
  // layout, and the threads run channels fastest: the 32 atomicAdds of a warp go to 32 neighbouring
  // addresses. Measured on an H200 for the contrastive benchmark's 880 boxes × 10 NCHW maps: bins
  // fastest (a warp's adds pile onto the same few cells of the small maps, P6 and P7) 1.37 ms;
  // channels fastest into NCHW gradients (32 planes apart) 2.41 ms; channels fastest into
  // channels-last gradients 0.37 ms.
  MapTable t{};
  int64_t size = 0;
  for (int64_t m = 0; m < M; ++m) {
    const int64_t B = shapes[4 * m], C = shapes[4 * m + 1], H = shapes[4 * m + 2], W = shapes[4 * m + 3];
    t.gradOffset[m] = size;
    t.sB[m] = C * H * W;
    t.sC[m] = 1;
    t.sH[m] = W * C;
    t.sW[m] = C;
    t.H[m] = static_cast<int>(H);
    t.W[m] = static_cast<int>(W);
    t.scale[m] = scales[m];
    size += B * C * H * W;
  }
  auto gf = at::zeros({size}, grad.options().dtype(at::kFloat));
  // [M, R, PH, PW, C], or (mean) [M, R, C] read by every bin's thread
  const auto go = (mean ? grad : grad.permute({0, 1, 3, 4, 2})).to(at::kFloat).contiguous();
  const int64_t total = M * R * PH * PW * shapes[1];
  if (total > 0) {
    withIndex(total, [&](auto index) {
      using Index = decltype(index);
      roiAlignBackwardKernel<Index><<<blocksFor(total), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(go.data_ptr<float>(), rois.data_ptr<float>(),
                                                                                                         gf.data_ptr<float>(), static_cast<Index>(total), t, g);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  const auto all = gf.to(mapOptions.dtype());  // one cast for every map (none in float32)
  std::vector<at::Tensor> grads;
  for (int64_t m = 0; m < M; ++m) {
    const int64_t B = shapes[4 * m], C = shapes[4 * m + 1], H = shapes[4 * m + 2], W = shapes[4 * m + 3];
    grads.push_back(all.as_strided({B, C, H, W}, {t.sB[m], t.sC[m], t.sH[m], t.sW[m]}, t.gradOffset[m]));
  }
  return grads;
}

}  // namespace onestage
