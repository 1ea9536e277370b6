// CUDA halves of the fused pytorch-retinanet focal term (focal.cpp, focal_math.h): one thread per
// element, forward writes the term, backward writes the gradient.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "core/losses/focal_math.h"

namespace onestage {

namespace {

// Index: int32_t when the tensor has fewer than 2^31 elements (64-bit division is emulated on the GPU)
template <typename Index>
__global__ void focalTermKernel(const float* __restrict__ x, const int64_t* __restrict__ labels, Index total, Index C,
                                FocalTerm f, float* __restrict__ out) {
  for (Index i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
    const Index row = i / C;
    const int64_t label = labels[row];
    out[i] = label == -2 ? 0.f : f.value(x[i], label == i - row * C);
  }
}

template <typename Index>
__global__ void focalGradKernel(const float* __restrict__ x, const int64_t* __restrict__ labels, const float* __restrict__ scale,
                                Index total, Index C, Index N, FocalTerm f, float* __restrict__ grad) {
  for (Index i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
    const Index row = i / C;
    const int64_t label = labels[row];
    grad[i] = label == -2 ? 0.f : scale[row / N] * f.derivative(x[i], label == i - row * C);
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
  const auto stream = at::cuda::getCurrentCUDAStream();
  if (total < INT32_MAX)
    focalTermKernel<int32_t><<<blocksFor(total), 256, 0, stream>>>(x.data_ptr<float>(), labels.data_ptr<int64_t>(),
                                                                   static_cast<int32_t>(total), static_cast<int32_t>(x.size(2)), f,
                                                                   out.data_ptr<float>());
  else
    focalTermKernel<int64_t><<<blocksFor(total), 256, 0, stream>>>(x.data_ptr<float>(), labels.data_ptr<int64_t>(), total, x.size(2),
                                                                   f, out.data_ptr<float>());
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
  const auto stream = at::cuda::getCurrentCUDAStream();
  if (total < INT32_MAX)
    focalGradKernel<int32_t><<<blocksFor(total), 256, 0, stream>>>(
        x.data_ptr<float>(), labels.data_ptr<int64_t>(), scale.data_ptr<float>(), static_cast<int32_t>(total),
        static_cast<int32_t>(x.size(2)), static_cast<int32_t>(labels.size(1)), f, grad.data_ptr<float>());
  else
    focalGradKernel<int64_t><<<blocksFor(total), 256, 0, stream>>>(x.data_ptr<float>(), labels.data_ptr<int64_t>(),
                                                                   scale.data_ptr<float>(), total, x.size(2), labels.size(1), f,
                                                                   grad.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return grad;
}

}  // namespace onestage
