#include "core/data/collate.h"

#include <ATen/Parallel.h>

#include "core/errors.h"

namespace onestage {

torch::Tensor collateImages(const std::vector<ImageView>& images, int64_t H, int64_t W, const std::array<double, 3>& mean,
                            const std::array<double, 3>& std, const torch::TensorOptions& options) {
  const int64_t B = static_cast<int64_t>(images.size());
  for (int64_t b = 0; b < B; ++b) {
    if (images[b].height > H || images[b].width > W || images[b].height < 1 || images[b].width < 1)
      throw RangeError("image " + std::to_string(b) + " (" + std::to_string(images[b].height) + "×" + std::to_string(images[b].width) +
                       ") does not fit the batch size " + std::to_string(H) + "×" + std::to_string(W));
  }
  auto out = torch::zeros({B, 3, H, W}, options.dtype(torch::kFloat32));
  float* o = out.data_ptr<float>();
  // per channel and byte value: the normalised float, computed once
  std::array<std::array<float, 256>, 3> table;
  for (int c = 0; c < 3; ++c)
    for (int v = 0; v < 256; ++v) table[c][v] = static_cast<float>((v / 255.0 - mean[c]) / std[c]);
  at::parallel_for(0, B * H, 16, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / H, y = row % H;
      const auto& img = images[b];
      if (y >= img.height) continue;
      const uint8_t* src = img.data + y * img.width * 3;
      for (int c = 0; c < 3; ++c) {
        float* dst = o + ((b * 3 + c) * H + y) * W;
        const auto& t = table[c];
        for (int64_t x = 0; x < img.width; ++x) dst[x] = t[src[3 * x + c]];
      }
    }
  });
  return out;
}

}  // namespace onestage
