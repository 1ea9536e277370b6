// One training step of a detector in one native call: forward (train mode; BatchNorm frozen as the
// model says), the RetinaNet loss composer, a finiteness check, backward, gradient-norm clipping,
// and the optimizer step (LibTorch's SGD or AdamW). A non-finite loss or gradient skips the step
// (no update) and says so — never a silent skip.
#pragma once
#include <torch/torch.h>

#include <memory>
#include <string>

#include "core/losses/retina_loss.h"
#include "core/models/detector.h"

namespace onestage {

struct OptimizerOptions {
  std::string type = "sgd";  // "sgd" | "adamw"
  double lr = 0.01;
  double momentum = 0.9;     // sgd
  double weightDecay = 1e-4;
  bool nesterov = false;     // sgd
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;  // adamw
  double clipGradNorm = 0.1;  // ≤ 0: no clipping (pytorch-retinanet clips at 0.1)
};

struct StepResult {
  double cls = 0, reg = 0, total = 0;
  double gradNorm = 0;  // before clipping
  bool skipped = false;
  std::string reason;   // why it was skipped
};

class TrainingSession {
 public:
  TrainingSession(std::shared_ptr<RetinaNetDetector> detector, const OptimizerOptions& optimizer, const RetinaLossOptions& loss);

  /// images [B, 3, H, W] float32, annotations [B, M, 5] (−1 padded), on the model's device; lr for this step.
  StepResult step(const torch::Tensor& images, const torch::Tensor& annotations, double lr);

  /// Optimizer state (momentum buffers, Adam moments, step counts) to and from a file of onestage's own
  /// (LibTorch archive), written atomically.
  void saveOptimizer(const std::string& path);
  void loadOptimizer(const std::string& path);

  RetinaLoss& loss() { return *loss_; }
  std::shared_ptr<RetinaNetDetector> detector() { return detector_; }

 private:
  std::shared_ptr<RetinaNetDetector> detector_;
  OptimizerOptions options_;
  std::unique_ptr<RetinaLoss> loss_;
  std::unique_ptr<torch::optim::Optimizer> optimizer_;
  std::vector<torch::Tensor> params_;
};

}  // namespace onestage
