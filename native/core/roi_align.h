// RoIAlign (Mask R-CNN's bilinear region pooling) with torchvision.ops.roi_align's arithmetic for a
// fixed sampling ratio: on CUDA float32 our fused kernels (roi_align_cuda.cu) with an autograd
// function; elsewhere (and with ONESTAGE_ROI_ALIGN=gather) built from LibTorch ops (gathers and
// weighted sums). The gradient is with respect to the features (none with respect to boxes, as
// torchvision).
#pragma once
#include <torch/torch.h>

namespace onestage {

struct RoiAlignOptions {
  int64_t outputHeight = 7;
  int64_t outputWidth = 7;
  /// Box coordinates are multiplied by this (1 / the feature map's stride).
  double spatialScale = 1.0;
  /// Sample points per bin along each axis (torchvision's sampling_ratio; must be ≥ 1 here).
  int64_t samplingRatio = 2;
  /// Pixel centres at +0.5 (torchvision's aligned=True): box coordinates are shifted by −0.5.
  bool aligned = true;
};

/// features [B, C, H, W] float, rois [R, 5] (batch index, x1, y1, x2, y2 in input pixels) →
/// [R, C, outputHeight, outputWidth]. Points outside [−1, H] × [−1, W] contribute 0, as torchvision.
torch::Tensor roiAlign(const torch::Tensor& features, const torch::Tensor& rois, const RoiAlignOptions& options);

}  // namespace onestage
