// NanoDet-Plus on onestage's backbone and pyramid: ResNet → FPN (P3–P6, strides 8–64 by default)
// → NanoDetPlusHead over centre priors, with the assignment-guidance module (AGM) for training:
// aux_fpn (a copy of the FPN, starting from the same weights, as NanoDet's deepcopy) and
// aux_head (SimpleConvHead) on the concatenation of the main and auxiliary pyramid features.
// Inference runs backbone → fpn → head only; decoding is GFL's Integral × stride → distance2bbox.
#pragma once
#include <torch/torch.h>

#include <string>
#include <vector>

#include "core/models/fpn.h"
#include "core/models/gfl_head.h"
#include "core/models/nanodet_neck.h"
#include "core/models/postprocess.h"
#include "core/models/resnet.h"

namespace onestage {

struct NanoDetPlusConfig {
  int64_t depth = 18;
  /// "resnet" (depth above, onestage's layout) or "shufflenetv2" (NanoDet's, width below).
  std::string backbone = "resnet";
  std::string backboneWidth = "1.0x";
  /// "fpn" (pytorch-retinanet's FPN) or "ghost-pan" (NanoDet-Plus's Ghost-PAN; levels beyond P5 are its extra levels).
  std::string neck = "fpn";
  int64_t neckKernelSize = 5;
  int64_t numClasses = 80;
  int64_t fpnChannels = 96;
  /// Strides of the pyramid levels used: 8, 16, 32 (P3–P5), then 64 (P6), 128 (P7).
  std::vector<int64_t> strides{8, 16, 32, 64};
  int64_t headChannels = 96;
  int64_t stackedConvs = 2;
  int64_t kernelSize = 5;
  std::string convType = "depthwise";
  int64_t regMax = 7;
  /// The AGM (aux_fpn + aux_head); without it the main head assigns its own labels.
  bool aux = true;
  int64_t auxChannels = 192;
  int64_t auxStackedConvs = 4;
  int64_t auxGroups = 32;
  /// BatchNorm layers stay in eval mode in train() (default false: NanoDet trains them).
  bool freezeBn = false;

  /// Checks values (RangeError naming the field).
  void check() const;
};

struct NanoDetPlusOutput {
  BackboneFeatures backbone;
  std::vector<torch::Tensor> pyramid;  // P3, … one per stride
  torch::Tensor preds;                 // [B, N, numClasses + 4·(regMax+1)]: logits, distance logits
  torch::Tensor auxPreds;              // same shape; only from forwardTrain with the AGM
  torch::Tensor priors;                // [N, 4] (cx, cy, stride, stride)
  std::vector<int64_t> levelSizes;
};

class NanoDetPlusImpl : public torch::nn::Module {
 public:
  explicit NanoDetPlusImpl(const NanoDetPlusConfig& config);

  /// images [B, 3, H, W] float32 (normalised) → features, head outputs, priors.
  NanoDetPlusOutput forward(const torch::Tensor& images);
  /// forward plus the AGM's predictions; detach: the auxiliary branch gets detached inputs (from
  /// detachEpoch on), so its losses no longer reach the backbone and the main FPN.
  NanoDetPlusOutput forwardTrain(const torch::Tensor& images, bool detach);

  Detections detect(const torch::Tensor& images, const torch::Tensor& scales, const torch::Tensor& sizes, const DetectOptions& opts);

  void train(bool on = true) override;
  const NanoDetPlusConfig& config() const { return config_; }
  bool isBackboneKey(const std::string& key) const;

  ResNet backbone{nullptr};
  ShuffleNetV2 shufflenet{nullptr};
  PyramidFeatures fpn{nullptr}, aux_fpn{nullptr};
  GhostPAN pan{nullptr}, aux_pan{nullptr};
  NanoDetPlusHead head{nullptr};
  SimpleConvHead aux_head{nullptr};

 private:
  BackboneFeatures features(const torch::Tensor& images);
  std::vector<torch::Tensor> neckForward(bool aux, const torch::Tensor& c3, const torch::Tensor& c4, const torch::Tensor& c5);
  NanoDetPlusOutput run(const torch::Tensor& images, bool withAux, bool detach);
  NanoDetPlusConfig config_;
};
TORCH_MODULE(NanoDetPlus);

}  // namespace onestage
