// Feature pyramid P3–P7 exactly as pytorch-retinanet's PyramidFeatures (module names P5_1, P5_2,
// P4_1, P4_2, P3_1, P3_2, P6, P7_2): P6 = 3×3 stride-2 conv on C5; P7 = 3×3 stride-2 conv on
// ReLU(P6); top-down nearest upsampling to the lateral's size (×2 when sizes are even, and still
// correct when they are odd, where pytorch-retinanet's scale_factor=2 fails).
#pragma once
#include <torch/torch.h>

#include <vector>

namespace onestage {

struct PyramidFeaturesImpl : torch::nn::Module {
  /// levels: 5 (P3–P7, RetinaNet), 4 (P3–P6, NanoDet-Plus's strides 8–64) or 3 (P3–P5); the
  /// modules of levels not produced are not created.
  /// p6FromP5: P6 from the P5 output (torchvision's RetinaNet v1) instead of from C5.
  PyramidFeaturesImpl(int64_t c3, int64_t c4, int64_t c5, int64_t featureSize = 256, int64_t levels = 5, bool p6FromP5 = false);
  /// C3, C4, C5 → {P3, P4, P5, P6, P7} (the first `levels`), each [B, featureSize, ·, ·].
  std::vector<torch::Tensor> forward(const torch::Tensor& c3, const torch::Tensor& c4, const torch::Tensor& c5);

  torch::nn::Conv2d P5_1{nullptr}, P5_2{nullptr}, P4_1{nullptr}, P4_2{nullptr}, P3_1{nullptr}, P3_2{nullptr},
      P6{nullptr}, P7_2{nullptr};
  int64_t levels;
  bool p6FromP5 = false;
};
TORCH_MODULE(PyramidFeatures);

}  // namespace onestage
