#include "core/anchors.h"

#include <cmath>

#include "core/errors.h"

namespace onestage {

AnchorConfig AnchorConfig::resolved() const {
  AnchorConfig c = *this;
  if (c.levels.empty()) throw RangeError("anchors.levels must not be empty");
  if (c.strides.empty())
    for (auto l : c.levels) c.strides.push_back(std::pow(2.0, static_cast<double>(l)));
  if (c.sizes.empty())
    for (auto l : c.levels) c.sizes.push_back(std::pow(2.0, static_cast<double>(l + 2)));
  if (c.strides.size() != c.levels.size())
    throw RangeError("anchors.strides must have one entry per level (" + std::to_string(c.levels.size()) + ")");
  if (c.sizes.size() != c.levels.size())
    throw RangeError("anchors.sizes must have one entry per level (" + std::to_string(c.levels.size()) + ")");
  if (c.ratios.empty() || c.scales.empty()) throw RangeError("anchors.ratios and anchors.scales must not be empty");
  for (double v : c.strides) if (!(v > 0)) throw RangeError("anchors.strides must be positive");
  for (double v : c.sizes) if (!(v > 0)) throw RangeError("anchors.sizes must be positive");
  for (double v : c.ratios) if (!(v > 0)) throw RangeError("anchors.ratios must be positive");
  for (double v : c.scales) if (!(v > 0)) throw RangeError("anchors.scales must be positive");
  if (c.style != "pytorch-retinanet" && c.style != "torchvision") throw RangeError("anchors.style must be 'pytorch-retinanet' or 'torchvision'");
  return c;
}

std::vector<std::pair<int64_t, int64_t>> anchorGridSizes(const AnchorConfig& cfg, int64_t height, int64_t width) {
  std::vector<std::pair<int64_t, int64_t>> out;
  for (double s : cfg.strides) {
    out.emplace_back(static_cast<int64_t>(std::ceil(height / s)), static_cast<int64_t>(std::ceil(width / s)));
  }
  return out;
}

torch::Tensor generateAnchors(const AnchorConfig& cfgIn, int64_t height, int64_t width) {
  const AnchorConfig cfg = cfgIn.resolved();
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  const auto grids = anchorGridSizes(cfg, height, width);
  std::vector<torch::Tensor> levels;
  if (cfg.style == "torchvision") {
    // torchvision's AnchorGenerator: sides int(size·scale) (as its anchor_sizes tuples), then in float32
    // h_ratio = √r, w_ratio = 1/h_ratio, (−ws, −hs, ws, hs)/2 rounded; shifts i·(input // grid), no offset
    const auto f32 = torch::TensorOptions().dtype(torch::kFloat32);
    for (size_t l = 0; l < cfg.levels.size(); ++l) {
      std::vector<float> sides;
      for (double s : cfg.scales) sides.push_back(static_cast<float>(std::trunc(cfg.sizes[l] * s)));
      std::vector<float> ratios(cfg.ratios.begin(), cfg.ratios.end());
      const auto scalesT = torch::tensor(sides, f32);
      const auto hRatios = torch::sqrt(torch::tensor(ratios, f32));
      const auto wRatios = 1 / hRatios;
      const auto ws = (wRatios.unsqueeze(1) * scalesT.unsqueeze(0)).reshape({-1});
      const auto hs = (hRatios.unsqueeze(1) * scalesT.unsqueeze(0)).reshape({-1});
      const auto base = (torch::stack({-ws, -hs, ws, hs}, 1) / 2).round();
      const auto [gh, gw] = grids[l];
      const int64_t sy = height / gh, sx = width / gw;
      const auto xs = torch::arange(gw, torch::kInt32) * sx;
      const auto ys = torch::arange(gh, torch::kInt32) * sy;
      const auto grid = torch::meshgrid({ys, xs}, "ij");
      const auto cx = grid[1].reshape({-1});
      const auto cy = grid[0].reshape({-1});
      const auto shifts = torch::stack({cx, cy, cx, cy}, 1);
      levels.push_back((shifts.view({-1, 1, 4}) + base.view({1, -1, 4})).reshape({-1, 4}));
    }
    return torch::cat(levels, 0).to(torch::kFloat32);
  }
  for (size_t l = 0; l < cfg.levels.size(); ++l) {
    // base anchors centred at 0: ratio-major, then scale
    std::vector<double> base;
    for (double r : cfg.ratios)
      for (double s : cfg.scales) {
        const double side = cfg.sizes[l] * s;
        const double w = std::sqrt(side * side / r);
        const double h = w * r;
        base.insert(base.end(), {-0.5 * w, -0.5 * h, 0.5 * w, 0.5 * h});
      }
    const auto baseT = torch::tensor(base, f64).view({-1, 4});  // [A, 4]
    const auto [gh, gw] = grids[l];
    const double stride = cfg.strides[l];
    const auto xs = (torch::arange(gw, f64) + 0.5) * stride;
    const auto ys = (torch::arange(gh, f64) + 0.5) * stride;
    const auto grid = torch::meshgrid({ys, xs}, "ij");
    const auto cx = grid[1].reshape({-1});
    const auto cy = grid[0].reshape({-1});
    const auto shifts = torch::stack({cx, cy, cx, cy}, 1);  // [K, 4]
    levels.push_back((shifts.unsqueeze(1) + baseT.unsqueeze(0)).reshape({-1, 4}));
  }
  return torch::cat(levels, 0).to(torch::kFloat32);
}

torch::Tensor AnchorCache::get(int64_t height, int64_t width, const torch::Device& device) {
  std::lock_guard<std::mutex> lock(mutex_);
  const auto key = std::make_tuple(height, width, device.str());
  auto it = cache_.find(key);
  if (it != cache_.end()) return it->second;
  if (cache_.size() > 64) cache_.clear();  // bounded: multi-scale training sees many sizes
  auto anchors = generateAnchors(cfg_, height, width).to(device);
  cache_.emplace(key, anchors);
  return anchors;
}

}  // namespace onestage
