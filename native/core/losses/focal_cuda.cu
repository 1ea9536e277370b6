// CUDA halves of the fused pytorch-retinanet focal term (focal.cpp, focal_math.h): one thread per
// element, forward writes the term, backward writes the gradient.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "core/losses/focal_math.h"

namespace onestage {

namespace {

__global__ void focalTermKernel(const float* __restrict__ x, const int64_t* __restrict__ labels, int64_t total, int64_t C,
                                FocalTerm f, float* __restrict__ out) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total; i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t label = labels[i / C];
    out[i] = label == -2 ? 0.f : f.value(x[i], label == i % C);
  }
}

__global__ void focalGradKernel(const float* __restrict__ x, const int64_t* __restrict__ labels, const float* __restrict__ scale,
                                int64_t total, int64_t C, int64_t N, FocalTerm f, float* __restrict__ grad) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total; i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = i / C;
    const int64_t label = labels[row];
    grad[i] = label == -2 ? 0.f : scale[row / N] * f.derivative(x[i], label == i % C);
  }
}

unsigned blocksFor(int64_t total) {
  const int64_t b = (total + 255) / 256;
  return static_cast<unsigned>(b < 65535 * 8 ? (b < 1 ? 1 : b) : 65535 * 8);
}

}  // namespace

at::Tensor focalTermCuda(const at::Tensor& xIn, const at::Tensor& labelsIn, double alpha, double gamma, bool probabilities) {
  const c10::cuda::CUDAGuard guard(xIn.device());
  const auto x = xIn.contiguous();
  const auto labels = labelsIn.contiguous();
  auto out = at::empty_like(x);
  const int64_t total = x.numel();
  if (total == 0) return out;
  const FocalTerm f{static_cast<float>(alpha), static_cast<float>(gamma), probabilities};
  focalTermKernel<<<blocksFor(total), 256, 0, at::cuda::getCurrentCUDAStream()>>>(x.data_ptr<float>(), labels.data_ptr<int64_t>(),
                                                                                  total, x.size(2), f, out.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor focalGradCuda(const at::Tensor& xIn, const at::Tensor& labelsIn, const at::Tensor& scaleIn, double alpha, double gamma,
                         bool probabilities) {
  const c10::cuda::CUDAGuard guard(xIn.device());
  const auto x = xIn.contiguous();
  const auto labels = labelsIn.contiguous();
  const auto scale = scaleIn.to(at::kFloat).contiguous();
  auto grad = at::empty_like(x);
  const int64_t total = x.numel();
  if (total == 0) return grad;
  const FocalTerm f{static_cast<float>(alpha), static_cast<float>(gamma), probabilities};
  focalGradKernel<<<blocksFor(total), 256, 0, at::cuda::getCurrentCUDAStream()>>>(
      x.data_ptr<float>(), labels.data_ptr<int64_t>(), scale.data_ptr<float>(), total, x.size(2), labels.size(1), f,
      grad.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return grad;
}

}  // namespace onestage
