#include "core/models/detector.h"

#include "core/tensor_types.h"

namespace onestage {

RetinaNetDetector::RetinaNetDetector(const RetinaNetConfig& config, const torch::Device& device)
    : net_(config), device_(device) {
  requireDeviceAvailable(device);
  net_->to(device);
}

void RetinaNetDetector::to(const torch::Device& device) {
  requireDeviceAvailable(device);
  net_->to(device);
  device_ = device;
}

int64_t RetinaNetDetector::parameterCount(bool trainableOnly) const {
  int64_t n = 0;
  for (const auto& p : net_->parameters())
    if (!trainableOnly || p.requires_grad()) n += p.numel();
  return n;
}

RetinaNetOutput RetinaNetDetector::forward(const torch::Tensor& images) {
  const c10::DeviceGuard guard(device_);  // worker threads start without a current CUDA device
  return net_->forward(images);
}

Detections RetinaNetDetector::detect(const torch::Tensor& images, const torch::Tensor& scales, const torch::Tensor& sizes,
                                     const DetectOptions& opts) {
  const c10::DeviceGuard guard(device_);
  return net_->detect(images, scales, sizes, opts);
}

LoadReport RetinaNetDetector::load(NamedTensors file, LoadOptions options, bool backboneOnly) {
  if (backboneOnly) {
    auto* net = net_.get();
    options.keyFilter = [net](const std::string& key) { return net->isBackboneKey(key); };
  }
  return loadStateDict(*net_, std::move(file), options);
}

void RetinaNetDetector::save(const std::string& path, const std::map<std::string, std::string>& metadata) {
  writeSafetensors(path, stateDict(*net_), metadata);
}

}  // namespace onestage
