#include "core/data/collate.h"

#include <ATen/Parallel.h>

#include <cstring>

#include "core/errors.h"

namespace onestage {

namespace {

void checkFit(const std::vector<ImageView>& images, int64_t H, int64_t W) {
  for (size_t b = 0; b < images.size(); ++b) {
    if (images[b].height > H || images[b].width > W || images[b].height < 1 || images[b].width < 1)
      throw RangeError("image " + std::to_string(b) + " (" + std::to_string(images[b].height) + "×" + std::to_string(images[b].width) +
                       ") does not fit the batch size " + std::to_string(H) + "×" + std::to_string(W));
  }
}

}  // namespace

std::array<std::array<float, 256>, 3> normalisationTable(const std::array<double, 3>& mean, const std::array<double, 3>& std) {
  std::array<std::array<float, 256>, 3> table;
  for (int c = 0; c < 3; ++c)
    for (int v = 0; v < 256; ++v) table[c][v] = static_cast<float>((v / 255.0 - mean[c]) / std[c]);
  return table;
}

torch::Tensor collateImages(const std::vector<ImageView>& images, int64_t H, int64_t W, const std::array<double, 3>& mean,
                            const std::array<double, 3>& std, const torch::TensorOptions& options) {
  const int64_t B = static_cast<int64_t>(images.size());
  checkFit(images, H, W);
  auto out = torch::zeros({B, 3, H, W}, options.dtype(torch::kFloat32));
  float* o = out.data_ptr<float>();
  // per channel and byte value: the normalised float, computed once
  const auto table = normalisationTable(mean, std);
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

torch::Tensor packImages(const std::vector<ImageView>& images, int64_t H, int64_t W, const torch::TensorOptions& options) {
  const int64_t B = static_cast<int64_t>(images.size());
  checkFit(images, H, W);
  auto out = torch::empty({B, H, W, 3}, options.dtype(torch::kUInt8));
  uint8_t* o = out.data_ptr<uint8_t>();
  at::parallel_for(0, B * H, 16, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / H, y = row % H;
      const auto& img = images[b];
      uint8_t* dst = o + (b * H + y) * W * 3;
      const int64_t copied = y < img.height ? img.width * 3 : 0;
      if (copied) std::memcpy(dst, img.data + y * img.width * 3, static_cast<size_t>(copied));
      std::memset(dst + copied, 0, static_cast<size_t>(W * 3 - copied));
    }
  });
  return out;
}

torch::Tensor normalisePacked(const torch::Tensor& packed, const std::vector<std::array<int64_t, 2>>& sizes, const std::array<double, 3>& mean,
                              const std::array<double, 3>& std) {
  if (packed.dim() != 4 || packed.size(3) != 3 || packed.scalar_type() != torch::kUInt8)
    throw std::logic_error("normalisePacked: expected [B, H, W, 3] uint8");
  const int64_t B = packed.size(0), H = packed.size(1), W = packed.size(2);
  if (static_cast<int64_t>(sizes.size()) != B) throw std::logic_error("normalisePacked: one size per image");
  torch::NoGradGuard noGrad;
  const auto host = normalisationTable(mean, std);
  const auto table = torch::from_blob(const_cast<float*>(host[0].data()), {3 * 256}, torch::kFloat32).to(packed.device());
  // index of (channel, byte) in the table, in [3, H, W] order: the gather writes the image's NCHW slab
  // directly; one image at a time keeps the int64 indices small (8 bytes a value)
  const auto offsets = torch::arange(0, 3 * 256, 256, torch::TensorOptions().dtype(torch::kInt64).device(packed.device())).view({3, 1, 1});
  auto out = torch::empty({B, 3, H, W}, torch::TensorOptions().dtype(torch::kFloat32).device(packed.device()));
  for (int64_t b = 0; b < B; ++b) {
    const int64_t h = sizes[b][0], w = sizes[b][1];
    if (h < 1 || w < 1 || h > H || w > W) throw std::logic_error("normalisePacked: image " + std::to_string(b) + " does not fit the batch");
    auto slab = out[b];
    at::take_out(slab, table, packed[b].permute({2, 0, 1}).to(torch::kInt64).add_(offsets));
    // padding is zero after normalisation (as collateImages)
    if (h < H) slab.narrow(1, h, H - h).zero_();
    if (w < W) slab.narrow(1, 0, h).narrow(2, w, W - w).zero_();
  }
  return out;
}

}  // namespace onestage
