// act(bn(x) [+ residual]) for the BatchNorm layers of the ResNet blocks. A frozen BatchNorm (eval
// mode: running statistics) on channels-last CUDA tensors runs as one fused kernel forward and one
// backward (core/models/frozen_bn_cuda.cu) — LibTorch's eval-mode BatchNorm, sum and ReLU otherwise
// (CPU, NCHW, BatchNorm in training mode, or ONESTAGE_FROZEN_BN=aten).
// The same kernels (a plain bias: scale 1) are the epilogue of the heads' and FPN's convolutions.
#pragma once
#include <torch/torch.h>

namespace onestage {

torch::Tensor batchNormAct(torch::nn::BatchNorm2dImpl& bn, const torch::Tensor& x, const torch::Tensor& residual, bool relu);

// act(conv(x)) for a convolution with a bias: on channels-last CUDA tensors the bias and the ReLU run as
// one fused epilogue kernel forward and one backward (the bias's gradient reduced in the same pass)
// instead of LibTorch's broadcast add, ReLU, threshold backward and bias-gradient reduction; the plain
// module call otherwise (CPU, NCHW, or ONESTAGE_FROZEN_BN=aten). x [N, Cin, H, W] → [N, Cout, H', W'].
torch::Tensor convBiasAct(torch::nn::Conv2dImpl& conv, const torch::Tensor& x, bool relu);

}  // namespace onestage
