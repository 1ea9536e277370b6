// Non-maximum suppression. Greedy, highest score first; a box is suppressed by a kept box of the
// same group when their IoU is > iouThreshold (torchvision.ops.nms semantics; ties in score keep
// the lower index first, as a stable descending sort).
#pragma once
#include <torch/torch.h>

namespace onestage {

/// boxes [N, 4], scores [N] → indices kept [K] int64, by decreasing score.
torch::Tensor nms(const torch::Tensor& boxes, const torch::Tensor& scores, double iouThreshold);

/// Class-aware NMS: only boxes with equal `groups` [N] (int64) suppress each other
/// (torchvision.ops.batched_nms). → indices kept [K], by decreasing score.
torch::Tensor batchedNms(const torch::Tensor& boxes, const torch::Tensor& scores, const torch::Tensor& groups,
                         double iouThreshold);

/// Padded batch: boxes [B, K, 4], scores [B, K], groups [B, K] int64, valid [B, K] bool → keep [B, K]
/// bool. Each image is independent; invalid entries are never kept and suppress nothing.
/// CPU: images in parallel; CUDA: one mask kernel and one scan kernel for the whole batch.
torch::Tensor paddedBatchNms(const torch::Tensor& boxes, const torch::Tensor& scores, const torch::Tensor& groups,
                             const torch::Tensor& valid, double iouThreshold);

#ifdef ONESTAGE_WITH_CUDA
/// CUDA implementation of paddedBatchNms for boxes already sorted by descending score per image
/// (invalid entries last). boxes [B, K, 4] float32 contiguous, groups [B, K] int64, count [B] int64
/// (valid entries per image) → keep [B, K] bool. Defined in nms_cuda.cu.
torch::Tensor sortedBatchNmsCuda(const torch::Tensor& boxes, const torch::Tensor& groups, const torch::Tensor& count,
                                 double iouThreshold);
#endif

}  // namespace onestage
