#include "core/data/contrastive_views.h"

#include <algorithm>
#include <cmath>

#include "core/errors.h"
#include "core/tensor_types.h"

namespace onestage {

namespace F = torch::nn::functional;

torch::Tensor contrastiveViews(const torch::Tensor& images, const torch::Tensor& annotations, const torch::Tensor& factors) {
  if (!images.is_floating_point() || images.dim() != 4)
    throw RangeError("images: expected a float tensor [B, C, H, W] but received " + describeShape(images.sizes()));
  const int64_t B = images.size(0), H = images.size(2), W = images.size(3);
  if (annotations.dim() != 3 || annotations.size(0) != B || annotations.size(2) != 5)
    throw RangeError("annotations: expected [" + std::to_string(B) + ", M, 5] but received " + describeShape(annotations.sizes()));
  if (factors.dim() != 1 || factors.size(0) != B)
    throw RangeError("factors: expected one zoom factor per image but received " + describeShape(factors.sizes()));
  torch::NoGradGuard noGrad;
  const auto ann = annotations.to(torch::kCPU, torch::kFloat64).contiguous();
  const auto fac = factors.to(torch::kCPU, torch::kFloat64).contiguous();
  const auto* a = ann.data_ptr<double>();
  const auto* f = fac.data_ptr<double>();
  const int64_t M = ann.size(1);
  const auto dopt = torch::TensorOptions().dtype(torch::kFloat32).device(images.device());
  // identity grid of pixel centres, in grid_sample's normalised coordinates (align_corners = false)
  const auto xs = (torch::arange(W, dopt) + 0.5) * (2.0 / static_cast<double>(W)) - 1.0;
  const auto ys = (torch::arange(H, dopt) + 0.5) * (2.0 / static_cast<double>(H)) - 1.0;
  auto grid = torch::stack({xs.view({1, 1, W}).expand({B, H, W}), ys.view({1, H, 1}).expand({B, H, W})}, -1).contiguous();
  auto inside = torch::zeros({B, 1, H, W}, dopt.dtype(torch::kBool));
  for (int64_t b = 0; b < B; ++b) {
    if (!(f[b] > 0)) throw RangeError("factors must be positive");
    std::vector<int64_t> order;
    for (int64_t m = 0; m < M; ++m)
      if (a[(b * M + m) * 5 + 4] >= 0) order.push_back(m);
    auto area = [&](int64_t m) {
      const double* r = a + (b * M + m) * 5;
      return (r[2] - r[0]) * (r[3] - r[1]);
    };
    std::stable_sort(order.begin(), order.end(), [&](int64_t i, int64_t j) { return area(i) > area(j); });
    for (int64_t m : order) {
      const double* r = a + (b * M + m) * 5;
      const int64_t c0 = std::clamp<int64_t>(static_cast<int64_t>(std::ceil(r[0] - 0.5)), 0, W);
      const int64_t c1 = std::clamp<int64_t>(static_cast<int64_t>(std::ceil(r[2] - 0.5)), 0, W);
      const int64_t r0 = std::clamp<int64_t>(static_cast<int64_t>(std::ceil(r[1] - 0.5)), 0, H);
      const int64_t r1 = std::clamp<int64_t>(static_cast<int64_t>(std::ceil(r[3] - 0.5)), 0, H);
      if (c1 <= c0 || r1 <= r0) continue;
      const double cx = 0.5 * (r[0] + r[2]), cy = 0.5 * (r[1] + r[3]);
      // source pixel coordinates c + (p − c)/f, then normalised
      const auto px = torch::arange(c0, c1, dopt.dtype(torch::kFloat64)) + 0.5;
      const auto py = torch::arange(r0, r1, dopt.dtype(torch::kFloat64)) + 0.5;
      const auto sx = ((cx + (px - cx) / f[b]) * (2.0 / W) - 1.0).to(torch::kFloat32);
      const auto sy = ((cy + (py - cy) / f[b]) * (2.0 / H) - 1.0).to(torch::kFloat32);
      auto region = grid[b].narrow(0, r0, r1 - r0).narrow(1, c0, c1 - c0);
      region.select(-1, 0).copy_(sx.view({1, -1}).expand({r1 - r0, c1 - c0}));
      region.select(-1, 1).copy_(sy.view({-1, 1}).expand({r1 - r0, c1 - c0}));
      inside[b].narrow(1, r0, r1 - r0).narrow(2, c0, c1 - c0).fill_(true);
    }
  }
  const auto zoomed = F::grid_sample(images.to(torch::kFloat32), grid,
                                     F::GridSampleFuncOptions().mode(torch::kBilinear).padding_mode(torch::kBorder).align_corners(false));
  return torch::where(inside, zoomed.to(images.scalar_type()), images);
}

}  // namespace onestage
