// act(bn(x) [+ residual]) for the BatchNorm layers of the ResNet blocks. A frozen BatchNorm (eval
// mode: running statistics) on channels-last CUDA tensors runs as one fused kernel forward and one
// backward (core/models/frozen_bn_cuda.cu) — LibTorch's eval-mode BatchNorm, sum and ReLU otherwise
// (CPU, NCHW, BatchNorm in training mode, or ONESTAGE_FROZEN_BN=aten).
#pragma once
#include <torch/torch.h>

namespace onestage {

torch::Tensor batchNormAct(torch::nn::BatchNorm2dImpl& bn, const torch::Tensor& x, const torch::Tensor& residual, bool relu);

}  // namespace onestage
