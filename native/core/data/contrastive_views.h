// The second view of the FocalContrastiveLoss idea: inside every ground-truth box, the image is
// replaced by the same-size crop of the whole image enlarged by a factor f (∈ [2, 3) in practice),
// centred on the enlarged box centre — a zoom by f about the box centre. For a pixel centre p in a
// box with centre c the view samples the original image bilinearly at c + (p − c)/f (edges clamped).
// Boxes are pasted largest first, so smaller objects stay visible where boxes overlap. Outside every
// box the view equals the image exactly. Runs on the images' device (one grid_sample for the batch).
#pragma once
#include <torch/torch.h>

namespace onestage {

/// images [B, C, H, W] float, annotations [B, M, 5] (label ≥ 0 real boxes, in input pixels),
/// factors [B] (zoom per image) → views [B, C, H, W]. A pixel belongs to a box when its centre
/// (x + 0.5, y + 0.5) lies in [x1, x2) × [y1, y2).
torch::Tensor contrastiveViews(const torch::Tensor& images, const torch::Tensor& annotations, const torch::Tensor& factors);

}  // namespace onestage
