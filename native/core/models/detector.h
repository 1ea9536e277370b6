// A detector owned by JavaScript: the model, the device it lives on, and a mutex that serialises
// every operation on it (forward, detect, training steps, weight loading, moves), so concurrent
// async calls from JavaScript never race on parameters or BatchNorm statistics.
#pragma once
#include <torch/torch.h>

#include <memory>
#include <mutex>

#include "core/models/retinanet.h"
#include "core/weights.h"

namespace onestage {

class RetinaNetDetector {
 public:
  RetinaNetDetector(const RetinaNetConfig& config, const torch::Device& device);

  std::mutex& mutex() { return mutex_; }
  RetinaNet& net() { return net_; }
  torch::Device device() const { return device_; }
  void to(const torch::Device& device);
  void setTraining(bool on) { net_->train(on); }
  bool training() const { return net_->is_training(); }
  /// All parameters, and those that get gradients.
  int64_t parameterCount(bool trainableOnly) const;

  RetinaNetOutput forward(const torch::Tensor& images);
  Detections detect(const torch::Tensor& images, const torch::Tensor& scales, const torch::Tensor& sizes,
                    const DetectOptions& opts);

  /// backboneOnly: only conv1, bn1, layer1..4 are loaded and required (torchvision resnet files).
  LoadReport load(NamedTensors file, LoadOptions options, bool backboneOnly);
  void save(const std::string& path, const std::map<std::string, std::string>& metadata);

 private:
  RetinaNet net_;
  torch::Device device_;
  std::mutex mutex_;
};

}  // namespace onestage
