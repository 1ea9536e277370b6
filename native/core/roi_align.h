// RoIAlign (Mask R-CNN's bilinear region pooling) with torchvision.ops.roi_align's arithmetic for a
// fixed sampling ratio: on CUDA our fused kernels (roi_align_cuda.cu: float32, float16 and bfloat16
// features in any memory layout, float32 accumulation, several maps in one launch) with an autograd
// function; elsewhere (and with ONESTAGE_ROI_ALIGN=gather) built from LibTorch ops (gathers and
// weighted sums). The gradient is with respect to the features (none with respect to boxes, as
// torchvision).
#pragma once
#include <torch/torch.h>

#include <vector>

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

/// The same rois pooled from several maps at once (e.g. every FPN level of two views): maps
/// [B, C, H_m, W_m] with one B, C, dtype and device, scales[m] the spatial scale of map m (the
/// options' spatialScale is not used) → float32 [maps, R, C, outputHeight, outputWidth] (accumulated
/// in float32 whatever the maps' dtype). One kernel launch forward and one backward on CUDA, whatever
/// the number of maps (at most kRoiAlignMaxMaps there), reading the maps in place (no layout copy).
torch::Tensor roiAlignMany(const std::vector<torch::Tensor>& maps, const torch::Tensor& rois, const std::vector<double>& scales,
                           const RoiAlignOptions& options);

/// roiAlignMany(...).mean({3, 4}) → float32 [maps, R, C], without the bins: on CUDA one thread per
/// channel averages its bins (each bin averaged over its samples first, as roiAlignMany), and the
/// backward spreads the mean's gradient without materialising it per bin.
torch::Tensor roiAlignManyMean(const std::vector<torch::Tensor>& maps, const torch::Tensor& rois, const std::vector<double>& scales,
                               const RoiAlignOptions& options);

constexpr int64_t kRoiAlignMaxMaps = 32;

}  // namespace onestage
