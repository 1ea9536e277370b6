// RetinaNet anchors (DESIGN.md): levels P3–P7, strides 2^l, sizes 2^(l+2), ratios 0.5/1/2
// (ratio = h/w), scales 2^0, 2^(1/3), 2^(2/3); ratio-major order within a location; centres at
// (i + 0.5)·stride; feature sizes ceil(H / stride). Values computed in float64 and rounded to
// float32 once, as pytorch-retinanet's numpy code does.
#pragma once
#include <torch/torch.h>

#include <map>
#include <mutex>
#include <tuple>
#include <string>
#include <vector>

namespace onestage {

struct AnchorConfig {
  std::vector<int64_t> levels{3, 4, 5, 6, 7};
  std::vector<double> strides;  // default 2^level
  std::vector<double> sizes;    // default 2^(level+2)
  std::vector<double> ratios{0.5, 1.0, 2.0};
  std::vector<double> scales{1.0, std::pow(2.0, 1.0 / 3.0), std::pow(2.0, 2.0 / 3.0)};
  /// "pytorch-retinanet": centres at (i + ½)·stride, base anchors in float64; "torchvision": its
  /// AnchorGenerator — sides int(size·scale), base anchors rounded (float32), centres i·(input // grid).
  std::string style = "pytorch-retinanet";

  /// Fills the defaults and checks lengths and values (RangeError naming the field).
  AnchorConfig resolved() const;
  int64_t anchorsPerLocation() const { return static_cast<int64_t>(ratios.size() * scales.size()); }
};

/// Feature-map size of each level for an input of height × width: ceil(size / stride).
std::vector<std::pair<int64_t, int64_t>> anchorGridSizes(const AnchorConfig& cfg, int64_t height, int64_t width);

/// All anchors for an input of height × width: [Σ_l H_l·W_l·A, 4] float32, level-major, then
/// row-major locations, then A anchors (ratio-major).
torch::Tensor generateAnchors(const AnchorConfig& cfg, int64_t height, int64_t width);

/// Anchors cached per (height, width, device); thread-safe.
class AnchorCache {
 public:
  explicit AnchorCache(AnchorConfig cfg) : cfg_(cfg.resolved()) {}
  torch::Tensor get(int64_t height, int64_t width, const torch::Device& device);
  const AnchorConfig& config() const { return cfg_; }

 private:
  AnchorConfig cfg_;
  std::mutex mutex_;
  std::map<std::tuple<int64_t, int64_t, std::string>, torch::Tensor> cache_;
};

}  // namespace onestage
