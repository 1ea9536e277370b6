// RetinaNet: ResNet backbone + PyramidFeatures + regression/classification subnets + anchors, with
// pytorch-retinanet's state_dict layout (conv1, bn1, layer1..4, fpn.*, regressionModel.*,
// classificationModel.*) and initialisation, and batched post-processing for any batch size.
#pragma once
#include <torch/torch.h>

#include <memory>

#include "core/anchors.h"
#include "core/boxes.h"
#include "core/models/fpn.h"
#include "core/models/postprocess.h"
#include "core/models/resnet.h"
#include "core/models/retina_head.h"

namespace onestage {

struct RetinaNetConfig {
  int64_t depth = 50;
  int64_t numClasses = 80;
  int64_t featureSize = 256;
  double prior = 0.01;  // classification bias −log((1−prior)/prior)
  AnchorConfig anchors;
  BoxCoder coder;
  /// BatchNorm layers stay in eval mode (running statistics fixed) even in train(): pytorch-retinanet.
  bool freezeBn = true;
  /// ...and their weight and bias get no gradient (not in pytorch-retinanet; common for small batches).
  bool freezeBnAffine = false;
  /// "pytorch-retinanet" (default), "torchvision" (P6 from P5's output) or "torchvision-v2" (P6 from
  /// C5, GroupNorm(32) in the subnets); the torchvision ones save and load torchvision's key names.
  std::string variant = "pytorch-retinanet";
  /// torchvision's trainable_backbone_layers: how many of layer4, layer3, layer2, layer1, conv1 (5: and
  /// bn1) train; the rest of the backbone gets no gradient. 5: all.
  int64_t trainableBackboneLayers = 5;
};

struct RetinaNetOutput {
  BackboneFeatures backbone;
  std::vector<torch::Tensor> pyramid;  // P3..P7
  torch::Tensor regression;            // [B, N, 4] raw deltas
  torch::Tensor classification;        // [B, N, numClasses] logits
  torch::Tensor anchors;               // [N, 4] float32, same device
};

class RetinaNetImpl : public torch::nn::Module {
 public:
  explicit RetinaNetImpl(const RetinaNetConfig& config);

  /// images [B, 3, H, W] float32 (normalised) → features, raw outputs and anchors.
  RetinaNetOutput forward(const torch::Tensor& images);

  /// Post-processing of raw outputs (no gradient): sigmoid scores, per level the top-k candidates
  /// above the score threshold, decode, clip to `limits` [B, 2] (height, width in input pixels),
  /// class-aware NMS per image, at most maxDetections per image.
  Detections postprocess(const RetinaNetOutput& out, const torch::Tensor& limits, const DetectOptions& opts) const;

  /// forward + postprocess, then boxes mapped to original pixels: divided by scales [B] and clipped
  /// to sizes [B, 2] (original height, width).
  Detections detect(const torch::Tensor& images, const torch::Tensor& scales, const torch::Tensor& sizes,
                    const DetectOptions& opts);

  /// Train/eval mode; with freezeBn the BatchNorm layers stay in eval mode.
  void train(bool on = true) override;

  const RetinaNetConfig& config() const { return config_; }
  /// The classification output layer back to its initialisation (the prior's bias).
  void reinitialiseClassifier();
  AnchorCache& anchorCache() { return *anchors_; }
  /// Parameter names of the backbone (for backbone-only weight loading).
  bool isBackboneKey(const std::string& key) const;

  ResNet backbone{nullptr};
  PyramidFeatures fpn{nullptr};
  RetinaSubnet regressionModel{nullptr}, classificationModel{nullptr};

 private:
  void initialiseParameters();
  RetinaNetConfig config_;
  std::shared_ptr<AnchorCache> anchors_;
};
TORCH_MODULE(RetinaNet);

}  // namespace onestage
