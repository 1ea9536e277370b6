// NanoDet-Plus centre priors (DESIGN.md): one prior per feature-map cell and level, strides 8, 16,
// 32, 64 by default, feature sizes ceil(H / s) × ceil(W / s) (the research code writes
// `ceil(W) / s`, a float that only works when W is a multiple of s), centres at (i·s, j·s) — no +0.5.
#pragma once
#include <torch/torch.h>

#include <utility>
#include <vector>

namespace onestage {

/// Feature-map (height, width) of each stride for an input of height × width: ceil(size / stride).
std::vector<std::pair<int64_t, int64_t>> priorGridSizes(const std::vector<int64_t>& strides, int64_t height, int64_t width);

/// Priors per level (H_l·W_l), in level order.
std::vector<int64_t> priorLevelSizes(const std::vector<int64_t>& strides, int64_t height, int64_t width);

/// All priors: [Σ_l H_l·W_l, 4] float32 rows (cx, cy, stride, stride), level-major then row-major
/// (y outer, x inner), on `device`.
torch::Tensor centrePriors(const std::vector<int64_t>& strides, int64_t height, int64_t width, const torch::Device& device);

/// Checks strides: non-empty, each 1…4096 (RangeError naming `what`).
void checkStrides(const std::vector<int64_t>& strides, const char* what);

}  // namespace onestage
