// max_pool2d (dilation 1, floor sizes) as the ResNet stems use it (3×3, stride 2, padding 1). On
// channels-last CUDA tensors (float, bf16 or half, C a multiple of the 16-byte vector) it runs as
// onestage's kernels: the forward keeps each window's argmax as a one-byte code (its position in the
// window) instead of LibTorch's 8-byte index — a ResNet-50 stem at batch 8, 640² writes 13 MB of codes
// instead of 105 MB of indices — and the backward gathers, for every input element, the gradients of
// the windows whose code names it. The values are LibTorch's bitwise: the first maximum of a window
// in scan order (a NaN wins, the last one), LibTorch's quirk for a window of −∞ only (its argmax is
// the image's element (0, 0)), the gradients summed in float window by window in LibTorch's order.
// LibTorch's max_pool2d otherwise (CPU, NCHW, other types or widths, or ONESTAGE_MAX_POOL=aten).
#pragma once
#include <torch/torch.h>

#include <string>

namespace onestage {

/// x [N, C, H, W] → [N, C, (H + 2p − k) / s + 1, (W + 2p − k) / s + 1]; k ≤ 15, p ≤ k / 2.
torch::Tensor maxPool2d(const torch::Tensor& x, int64_t kernel, int64_t stride, int64_t padding);

/// What maxPool2d runs for x: "onestage" (the kernels above) or "aten".
std::string maxPool2dImplementation(const torch::Tensor& x, int64_t kernel, int64_t stride, int64_t padding);

/// maxPool2d's output and the gradient of Σ(y·gradOutput) for x, by onestage's kernels where they apply
/// (`aten`: LibTorch's max_pool2d whatever the input) — what the tests compare.
struct MaxPoolResult {
  torch::Tensor output, gradInput;
  std::string implementation;
};
MaxPoolResult maxPool2dWithGradient(const torch::Tensor& x, const torch::Tensor& gradOutput, int64_t kernel, int64_t stride, int64_t padding, bool aten);

}  // namespace onestage
