// GIoU between aligned boxes and the GIoU loss, as mmdetection's / NanoDet's bbox_overlaps(mode='giou',
// is_aligned=True): union and enclosing area max-clamped to eps (default 1e-6).
#pragma once
#include <torch/torch.h>

namespace onestage {

/// pred [..., 4], target [..., 4] → GIoU [...].
torch::Tensor alignedGiou(const torch::Tensor& pred, const torch::Tensor& target, double eps = 1e-6);
/// 1 − GIoU, per box [...].
torch::Tensor giouLoss(const torch::Tensor& pred, const torch::Tensor& target, double eps = 1e-6);

/// Smooth L1 with transition β (β ≤ 0: L1), elementwise: 0.5·d²/β if d < β else d − 0.5·β.
/// At β = 1/9 the arithmetic is pytorch-retinanet's (4.5·d², d − 0.5/9, the branch at d ≤ β).
torch::Tensor smoothL1(const torch::Tensor& diff, double beta);

}  // namespace onestage
