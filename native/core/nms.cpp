#include "core/nms.h"

#include <ATen/Parallel.h>

#include "core/boxes.h"
#include "core/errors.h"
#include "core/tensor_types.h"

namespace onestage {

namespace {

/// Greedy NMS over `n` boxes already in score order (x1,y1,x2,y2 float, contiguous), groups
/// optional. Writes keep flags. O(n·kept) with early skip of suppressed boxes.
template <typename T>
void greedySorted(const T* b, const int64_t* groups, int64_t n, double thr, bool* keep) {
  std::vector<T> area(n);
  for (int64_t i = 0; i < n; ++i) {
    area[i] = std::max<T>(b[4 * i + 2] - b[4 * i], 0) * std::max<T>(b[4 * i + 3] - b[4 * i + 1], 0);
    keep[i] = true;
  }
  for (int64_t i = 0; i < n; ++i) {
    if (!keep[i]) continue;
    const T ix1 = b[4 * i], iy1 = b[4 * i + 1], ix2 = b[4 * i + 2], iy2 = b[4 * i + 3];
    for (int64_t j = i + 1; j < n; ++j) {
      if (!keep[j] || (groups != nullptr && groups[j] != groups[i])) continue;
      const T w = std::min(ix2, b[4 * j + 2]) - std::max(ix1, b[4 * j]);
      if (w <= 0) continue;
      const T h = std::min(iy2, b[4 * j + 3]) - std::max(iy1, b[4 * j + 1]);
      if (h <= 0) continue;
      const T inter = w * h;
      const T uni = area[i] + area[j] - inter;
      if (uni > 0 && inter / uni > thr) keep[j] = false;
    }
  }
}

void checkNmsInputs(const torch::Tensor& boxes, const torch::Tensor& scores, int64_t dims) {
  checkBoxes(boxes, "nms boxes");
  if (boxes.dim() != dims + 1)
    throw RangeError("nms boxes: expected " + std::to_string(dims + 1) + " dimensions but received " + describeShape(boxes.sizes()));
  if (!scores.is_floating_point()) throw TypeError("nms scores: expected a floating tensor");
  if (scores.sizes() != boxes.sizes().slice(0, dims))
    throw RangeError("nms scores: expected shape " + describeShape(boxes.sizes().slice(0, dims)) + " but received " +
                     describeShape(scores.sizes()));
  if (scores.device() != boxes.device()) throw TypeError("nms: boxes and scores are on different devices");
}

void checkGroups(const torch::Tensor& groups, const torch::Tensor& scores) {
  if (groups.scalar_type() != torch::kInt64 && groups.scalar_type() != torch::kInt32)
    throw TypeError("nms groups: expected an int64 or int32 tensor");
  if (groups.sizes() != scores.sizes())
    throw RangeError("nms groups: expected shape " + describeShape(scores.sizes()) + " but received " + describeShape(groups.sizes()));
}

}  // namespace

torch::Tensor paddedBatchNms(const torch::Tensor& boxes, const torch::Tensor& scores, const torch::Tensor& groupsIn,
                             const torch::Tensor& valid, double iouThreshold) {
  checkNmsInputs(boxes, scores, 2);
  checkGroups(groupsIn, scores);
  if (valid.scalar_type() != torch::kBool || valid.sizes() != scores.sizes())
    throw TypeError("nms valid: expected a bool tensor of shape " + describeShape(scores.sizes()));
  torch::NoGradGuard noGrad;
  const int64_t B = boxes.size(0), K = boxes.size(1);
  if (B == 0 || K == 0) return torch::zeros({B, K}, torch::TensorOptions().dtype(torch::kBool).device(boxes.device()));
  // sort each image by score, invalid entries last (stable: ties keep index order)
  const auto masked = torch::where(valid, scores.to(torch::kFloat64), torch::full_like(scores, -INFINITY, torch::kFloat64));
  const auto order = std::get<1>(masked.sort(/*stable=*/true, /*dim=*/1, /*descending=*/true));
  const auto sortedBoxes = boxes.gather(1, order.unsqueeze(-1).expand({B, K, 4})).contiguous();
  const auto sortedGroups = groupsIn.to(torch::kInt64).gather(1, order).contiguous();
  const auto count = valid.sum(1);  // [B]
  torch::Tensor keepSorted;
#ifdef ONESTAGE_WITH_CUDA
  // the pairwise mask takes B·K·⌈K/64⌉·8 bytes: beyond 512 MiB (topk disabled on huge inputs) use the CPU
  const int64_t maskBytes = B * K * ((K + 63) / 64) * 8;
  if (boxes.is_cuda() && maskBytes <= (int64_t{1} << 29)) {
    keepSorted = sortedBatchNmsCuda(sortedBoxes.to(torch::kFloat32), sortedGroups, count, iouThreshold);
  }
#endif
  if (!keepSorted.defined()) {
    const auto cpuBoxes = sortedBoxes.to(torch::kCPU);
    const auto cpuGroups = sortedGroups.to(torch::kCPU);
    const auto cpuCount = count.to(torch::kCPU);
    auto keep = torch::zeros({B, K}, torch::kBool);
    AT_DISPATCH_FLOATING_TYPES(cpuBoxes.scalar_type(), "paddedBatchNms", [&] {
      const auto* b = cpuBoxes.data_ptr<scalar_t>();
      const auto* g = cpuGroups.data_ptr<int64_t>();
      const auto* c = cpuCount.data_ptr<int64_t>();
      auto* k = keep.data_ptr<bool>();
      at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) greedySorted(b + i * K * 4, g + i * K, c[i], iouThreshold, k + i * K);
      });
    });
    keepSorted = keep.to(boxes.device());
  }
  // scatter back to the original positions
  return torch::zeros_like(keepSorted).scatter(1, order, keepSorted);
}

torch::Tensor batchedNms(const torch::Tensor& boxes, const torch::Tensor& scores, const torch::Tensor& groups,
                         double iouThreshold) {
  checkNmsInputs(boxes, scores, 1);
  checkGroups(groups, scores);
  torch::NoGradGuard noGrad;
  const auto valid = torch::ones_like(scores, torch::kBool);
  const auto keep = paddedBatchNms(boxes.unsqueeze(0), scores.unsqueeze(0), groups.unsqueeze(0), valid.unsqueeze(0),
                                   iouThreshold)[0];
  const auto idx = keep.nonzero().squeeze(1);
  // by decreasing score (stable)
  const auto order = std::get<1>(scores.index_select(0, idx).to(torch::kFloat64).sort(true, 0, true));
  return idx.index_select(0, order);
}

torch::Tensor nms(const torch::Tensor& boxes, const torch::Tensor& scores, double iouThreshold) {
  checkNmsInputs(boxes, scores, 1);
  return batchedNms(boxes, scores, torch::zeros({scores.size(0)}, scores.options().dtype(torch::kInt64)), iouThreshold);
}

}  // namespace onestage
