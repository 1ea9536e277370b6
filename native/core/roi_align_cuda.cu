// CUDA RoIAlign forward and backward (roi_align.cpp's autograd function): one thread per output
// element [r, c, ph, pw] averaging S×S bilinear samples, and the backward scattering each output
// gradient to its 4·S·S feature cells with atomicAdd. The arithmetic is roi_align.cpp's (coordinates
// in double, torchvision's bilinear_interpolate rules); features NCHW float32.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

namespace onestage {

namespace {

constexpr int kThreads = 256;

struct RoiGeometry {
  double scale;
  int PH, PW, S;
  bool aligned;
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

/// The RoI's start and bin size along both axes.
__device__ inline void roiBins(const float* roi, const RoiGeometry& g, double& x0, double& y0, double& binW, double& binH) {
  const double offset = g.aligned ? 0.5 : 0.0;
  x0 = static_cast<double>(roi[1]) * g.scale - offset;
  y0 = static_cast<double>(roi[2]) * g.scale - offset;
  double w = static_cast<double>(roi[3]) * g.scale - offset - x0;
  double h = static_cast<double>(roi[4]) * g.scale - offset - y0;
  if (!g.aligned) {
    w = w < 1.0 ? 1.0 : w;
    h = h < 1.0 ? 1.0 : h;
  }
  binW = w / g.PW;
  binH = h / g.PH;
}

/// Visits the bilinear corners of every sample of output element i ([r, c, ph, pw] of R×C×PH×PW):
/// visit(cell offset within the element's H×W plane, weight), weights not yet divided by S².
template <typename Visit>
__device__ inline void forEachCorner(int64_t i, const float* __restrict__ rois, int C, int H, int W, const RoiGeometry& g, Visit visit) {
  const int pw = static_cast<int>(i % g.PW);
  const int ph = static_cast<int>((i / g.PW) % g.PH);
  const int64_t r = i / (static_cast<int64_t>(g.PW) * g.PH * C);
  const float* roi = rois + 5 * r;
  double x0, y0, binW, binH;
  roiBins(roi, g, x0, y0, binW, binH);
  for (int iy = 0; iy < g.S; ++iy) {
    const double y = y0 + binH * (ph + (iy + 0.5) / g.S);
    int yl, yh;
    double wyl, wyh;
    if (!axisSample(y, H, yl, yh, wyl, wyh)) continue;
    for (int ix = 0; ix < g.S; ++ix) {
      const double x = x0 + binW * (pw + (ix + 0.5) / g.S);
      int xl, xh;
      double wxl, wxh;
      if (!axisSample(x, W, xl, xh, wxl, wxh)) continue;
      visit(yl * W + xl, static_cast<float>(wyl * wxl));
      visit(yl * W + xh, static_cast<float>(wyl * wxh));
      visit(yh * W + xl, static_cast<float>(wyh * wxl));
      visit(yh * W + xh, static_cast<float>(wyh * wxh));
    }
  }
}

/// Offset of output element i's (b, c) feature plane (the batch index clamped into [0, B)).
__device__ inline int64_t planeOffset(int64_t i, const float* __restrict__ rois, int B, int C, int H, int W, const RoiGeometry& g) {
  const int c = static_cast<int>((i / (g.PW * g.PH)) % C);
  const int64_t r = i / (static_cast<int64_t>(g.PW) * g.PH * C);
  int b = static_cast<int>(rois[5 * r]);
  b = b < 0 ? 0 : (b >= B ? B - 1 : b);
  return (static_cast<int64_t>(b) * C + c) * H * W;
}

__global__ void roiAlignForwardKernel(const float* __restrict__ f, const float* __restrict__ rois, float* __restrict__ out, int64_t total,
                                      int B, int C, int H, int W, RoiGeometry g) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total; i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float* plane = f + planeOffset(i, rois, B, C, H, W, g);
    float sum = 0.f;
    forEachCorner(i, rois, C, H, W, g, [&](int cell, float w) { sum += w * plane[cell]; });
    out[i] = sum / static_cast<float>(g.S * g.S);
  }
}

__global__ void roiAlignBackwardKernel(const float* __restrict__ grad, const float* __restrict__ rois, float* __restrict__ gf, int64_t total,
                                       int B, int C, int H, int W, RoiGeometry g) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total; i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float go = grad[i] / static_cast<float>(g.S * g.S);
    if (go == 0.f) continue;
    float* plane = gf + planeOffset(i, rois, B, C, H, W, g);
    forEachCorner(i, rois, C, H, W, g, [&](int cell, float w) { atomicAdd(plane + cell, go * w); });
  }
}

unsigned blocksFor(int64_t total) {
  const int64_t b = (total + kThreads - 1) / kThreads;
  return static_cast<unsigned>(b < 65535 * 8 ? (b < 1 ? 1 : b) : 65535 * 8);
}

}  // namespace

at::Tensor roiAlignForwardCuda(const at::Tensor& features, const at::Tensor& rois, double scale, int64_t PH, int64_t PW, int64_t S, bool aligned) {
  const c10::cuda::CUDAGuard guard(features.device());
  const int64_t B = features.size(0), C = features.size(1), H = features.size(2), W = features.size(3), R = rois.size(0);
  auto out = at::empty({R, C, PH, PW}, features.options());
  const int64_t total = out.numel();
  if (total == 0) return out;
  const RoiGeometry g{scale, static_cast<int>(PH), static_cast<int>(PW), static_cast<int>(S), aligned};
  roiAlignForwardKernel<<<blocksFor(total), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      features.data_ptr<float>(), rois.data_ptr<float>(), out.data_ptr<float>(), total, static_cast<int>(B), static_cast<int>(C),
      static_cast<int>(H), static_cast<int>(W), g);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor roiAlignBackwardCuda(const at::Tensor& grad, const at::Tensor& rois, int64_t B, int64_t C, int64_t H, int64_t W, double scale, int64_t S,
                                bool aligned) {
  const c10::cuda::CUDAGuard guard(grad.device());
  auto gf = at::zeros({B, C, H, W}, grad.options());
  const int64_t total = grad.numel();
  if (total == 0) return gf;
  const RoiGeometry g{scale, static_cast<int>(grad.size(2)), static_cast<int>(grad.size(3)), static_cast<int>(S), aligned};
  roiAlignBackwardKernel<<<blocksFor(total), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      grad.data_ptr<float>(), rois.data_ptr<float>(), gf.data_ptr<float>(), total, static_cast<int>(B), static_cast<int>(C),
      static_cast<int>(H), static_cast<int>(W), g);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return gf;
}

}  // namespace onestage
