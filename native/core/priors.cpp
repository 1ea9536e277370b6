#include "core/priors.h"

#include "core/errors.h"

namespace onestage {

void checkStrides(const std::vector<int64_t>& strides, const char* what) {
  if (strides.empty() || strides.size() > 8) throw RangeError(std::string(what) + ": expected 1 to 8 strides");
  for (auto s : strides)
    if (s < 1 || s > 4096) throw RangeError(std::string(what) + ": strides must be integers between 1 and 4096 (received " + std::to_string(s) + ")");
}

std::vector<std::pair<int64_t, int64_t>> priorGridSizes(const std::vector<int64_t>& strides, int64_t height, int64_t width) {
  std::vector<std::pair<int64_t, int64_t>> out;
  for (auto s : strides) out.emplace_back((height + s - 1) / s, (width + s - 1) / s);
  return out;
}

std::vector<int64_t> priorLevelSizes(const std::vector<int64_t>& strides, int64_t height, int64_t width) {
  std::vector<int64_t> out;
  for (const auto& [h, w] : priorGridSizes(strides, height, width)) out.push_back(h * w);
  return out;
}

torch::Tensor centrePriors(const std::vector<int64_t>& strides, int64_t height, int64_t width, const torch::Device& device) {
  checkStrides(strides, "strides");
  const auto f32 = torch::TensorOptions().dtype(torch::kFloat32).device(device);
  std::vector<torch::Tensor> levels;
  const auto sizes = priorGridSizes(strides, height, width);
  for (size_t l = 0; l < strides.size(); ++l) {
    const auto s = static_cast<double>(strides[l]);
    const auto [h, w] = sizes[l];
    const auto ys = torch::arange(h, f32) * s;
    const auto xs = torch::arange(w, f32) * s;
    const auto y = ys.view({h, 1}).expand({h, w}).reshape({-1});
    const auto x = xs.view({1, w}).expand({h, w}).reshape({-1});
    const auto st = torch::full({h * w}, s, f32);
    levels.push_back(torch::stack({x, y, st, st}, 1));
  }
  return torch::cat(levels, 0);
}

}  // namespace onestage
