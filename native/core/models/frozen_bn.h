// act(bn(x) [+ residual]) for the BatchNorm layers of the ResNet blocks. A frozen BatchNorm (eval
// mode: running statistics) on channels-last CUDA tensors runs as one fused kernel forward and one
// backward (core/models/frozen_bn_cuda.cu) — LibTorch's eval-mode BatchNorm, sum and ReLU otherwise
// (CPU, NCHW, BatchNorm in training mode, or ONESTAGE_FROZEN_BN=aten).
// The same kernels (a plain bias: scale 1) are the epilogue of the heads' and FPN's convolutions.
#pragma once
#include <torch/torch.h>

#include <string>
#include <utility>
#include <vector>

namespace onestage {

torch::Tensor batchNormAct(torch::nn::BatchNorm2dImpl& bn, const torch::Tensor& x, const torch::Tensor& residual, bool relu);

// The same for an output with two uses (a ResNet block's output: the next block's first convolution, and its shortcut):
// two handles of one tensor. On the fused path each handle's gradient reaches the BatchNorm's backward on its own and the
// kernel sums them as it reads them (rounded to the storage type, as autograd's sum) — autograd would otherwise write their
// sum as one more tensor and the kernel read it back. Elsewhere both handles are the same tensor. ONESTAGE_SHORTCUT_GRADIENTS=
// autograd (read at every call) hands out one tensor twice everywhere (ONESTAGE_RELU_MASK=output: the backward reads the
// ReLU's mask from the output where it would recompute it from x — both for benchmarks' comparisons); the test hook ONESTAGE_TEST_FROZEN_BN=emulate runs the
// fused path's autograd with ATen replicas of the kernels on any device.
std::pair<torch::Tensor, torch::Tensor> batchNormActTwice(torch::nn::BatchNorm2dImpl& bn, const torch::Tensor& x, const torch::Tensor& residual, bool relu);

// The fused kernels' forward and backward on their own, what the tests compare: y = act(x·s + t [+ r]) and, for the output's
// gradient gy (+ gy2, a second use's), ∂x, ∂r, ∂weight, ∂bias. params [4, C] float32: weight, bias, running mean, running
// variance. CUDA: the kernels (channels-last storage, C a multiple of the 16-byte vector); CPU: their ATen replicas in float32.
// `maskFromOutput`: the ReLU's mask from y (as with a residual) instead of recomputed from x; `sumFirst`: gy + gy2 summed
// before the backward (one gradient, as autograd hands it) instead of inside it. RangeError for bad shapes or storage.
struct FrozenBnCheck {
  torch::Tensor output, gradInput, gradResidual, gradWeight, gradBias;
  std::string implementation;  // "kernels" or "emulation"
};
FrozenBnCheck frozenBatchNormWithGradient(const torch::Tensor& x, const torch::Tensor& r, const torch::Tensor& gy, const torch::Tensor& gy2,
                                          const torch::Tensor& params, double eps, bool relu, bool maskFromOutput, bool sumFirst);

// act(bn(conv(x))) for a convolution without a bias and the frozen BatchNorm after it. In inference (no gradient mode) with the ReLU,
// on channels-last CUDA tensors computed in 16 bits (bf16 autocast — detect's amp — or bf16/half inputs), the BatchNorm is folded
// into the convolution (weight w·s, bias t, each rounded once to the 16-bit type) and cuDNN's fused convolution + bias + ReLU runs
// the three as one kernel; otherwise, and where cuDNN finds no engine for the shapes, the convolution then batchNormAct. Float32
// inference and training keep the unfolded arithmetic. ONESTAGE_CONV_FUSION=off (read at every call) turns the folding and the
// fused heads (convBiasAct) off; the test hook ONESTAGE_TEST_CONV_FUSION=emulate runs their arithmetic in ATen on any device and type.
torch::Tensor convBatchNormAct(torch::nn::Conv2dImpl& conv, torch::nn::BatchNorm2dImpl& bn, const torch::Tensor& x, bool relu);

// The folded weights of a model's frozen BatchNorm layers for one inference forward, made up front in a few launches instead of one
// per convolution; convBatchNormAct takes its convolution's from the innermost scope alive on its thread (and folds one itself where
// the scope has none). Made only where convBatchNormAct would fold: no gradient mode, CUDA autocast to a 16-bit type, cuDNN on,
// neither switch off, channels-last float32 weights on CUDA; empty otherwise. `pairs`: (convolution, BatchNorm) with a ReLU after.
using ConvBatchNormPairs = std::vector<std::pair<torch::nn::Conv2dImpl*, torch::nn::BatchNorm2dImpl*>>;
class FoldedBatchNorms {
 public:
  explicit FoldedBatchNorms(const ConvBatchNormPairs& pairs);
  ~FoldedBatchNorms();
  FoldedBatchNorms(const FoldedBatchNorms&) = delete;
  FoldedBatchNorms& operator=(const FoldedBatchNorms&) = delete;
  /// {w·s, t} of `conv` in `type`, or null.
  const std::pair<torch::Tensor, torch::Tensor>* find(const torch::nn::Conv2dImpl* conv, torch::ScalarType type) const;
  /// How many convolutions it folded.
  size_t size() const { return folds_.size(); }

 private:
  std::vector<std::pair<const torch::nn::Conv2dImpl*, std::pair<torch::Tensor, torch::Tensor>>> folds_;
  torch::ScalarType type_ = torch::kFloat32;
  const FoldedBatchNorms* previous_ = nullptr;
};

// act(conv(x)) for a convolution with a bias: on channels-last CUDA tensors the bias and the ReLU run as
// one fused epilogue kernel forward and one backward (the bias's gradient reduced in the same pass)
// instead of LibTorch's broadcast add, ReLU, threshold backward and bias-gradient reduction; the plain
// module call otherwise (CPU, NCHW, or ONESTAGE_FROZEN_BN=aten). In 16-bit inference with the ReLU (as convBatchNormAct) cuDNN's
// fused convolution + bias + ReLU runs all three. x [N, Cin, H, W] → [N, Cout, H', W'].
torch::Tensor convBiasAct(torch::nn::Conv2dImpl& conv, const torch::Tensor& x, bool relu);

}  // namespace onestage
