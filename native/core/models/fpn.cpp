#include "core/models/fpn.h"

#include "core/errors.h"
#include "core/models/frozen_bn.h"

namespace onestage {

namespace nn = torch::nn;
namespace F = torch::nn::functional;

namespace {
nn::Conv2d conv(int64_t in, int64_t out, int64_t k, int64_t stride) {
  return nn::Conv2d(nn::Conv2dOptions(in, out, k).stride(stride).padding(k / 2));
}
torch::Tensor upsampleTo(const torch::Tensor& x, const torch::Tensor& like) {
  return F::interpolate(x, F::InterpolateFuncOptions()
                               .size(std::vector<int64_t>{like.size(2), like.size(3)})
                               .mode(torch::kNearest));
}
}  // namespace

PyramidFeaturesImpl::PyramidFeaturesImpl(int64_t c3, int64_t c4, int64_t c5, int64_t fs, int64_t levelCount, bool p6FromP5_)
    : levels(levelCount), p6FromP5(p6FromP5_) {
  if (levels < 3 || levels > 5) throw RangeError("the feature pyramid has 3 to 5 levels (P3–P5 … P3–P7)");
  P5_1 = register_module("P5_1", conv(c5, fs, 1, 1));
  P5_2 = register_module("P5_2", conv(fs, fs, 3, 1));
  P4_1 = register_module("P4_1", conv(c4, fs, 1, 1));
  P4_2 = register_module("P4_2", conv(fs, fs, 3, 1));
  P3_1 = register_module("P3_1", conv(c3, fs, 1, 1));
  P3_2 = register_module("P3_2", conv(fs, fs, 3, 1));
  if (levels >= 4) P6 = register_module("P6", conv(p6FromP5 ? fs : c5, fs, 3, 2));
  if (levels >= 5) P7_2 = register_module("P7_2", conv(fs, fs, 3, 2));
}

std::vector<torch::Tensor> PyramidFeaturesImpl::forward(const torch::Tensor& c3, const torch::Tensor& c4,
                                                        const torch::Tensor& c5) {
  // each convolution with its bias as one fused epilogue on CUDA (core/models/frozen_bn.h)
  auto convBias = [](nn::Conv2d& c, const torch::Tensor& x) { return convBiasAct(*c, x, false); };
  const auto p5Lateral = convBias(P5_1, c5);
  const auto p4Lateral = convBias(P4_1, c4) + upsampleTo(p5Lateral, c4);
  const auto p3Lateral = convBias(P3_1, c3) + upsampleTo(p4Lateral, c3);
  std::vector<torch::Tensor> out{convBias(P3_2, p3Lateral), convBias(P4_2, p4Lateral), convBias(P5_2, p5Lateral)};
  if (levels >= 4) out.push_back(convBias(P6, p6FromP5 ? out[2] : c5));
  if (levels >= 5) out.push_back(convBias(P7_2, torch::relu(out[3])));
  return out;
}

}  // namespace onestage
