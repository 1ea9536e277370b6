#include "core/models/detector.h"

#include "core/losses/nanodet_loss.h"
#include "core/tensor_types.h"

namespace onestage {

Detector::Detector(const torch::Device& device) : device_(device) { requireDeviceAvailable(device); }

void Detector::to(const torch::Device& device) {
  requireDeviceAvailable(device);
  module().to(device);
  device_ = device;
}

void Detector::setChannelsLast(bool on) {
  torch::NoGradGuard noGrad;
  const auto format = on ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  // set_data keeps each parameter's identity (optimizers and sessions hold the same tensors)
  for (auto& p : module().parameters())
    if (p.dim() == 4) p.set_data(p.data().contiguous(format));
}

bool Detector::channelsLast() {
  for (const auto& p : module().parameters())
    if (p.dim() == 4 && p.size(1) > 1 && (p.size(2) > 1 || p.size(3) > 1)) return p.is_contiguous(at::MemoryFormat::ChannelsLast) && !p.is_contiguous();
  return false;
}

int64_t Detector::parameterCount(bool trainableOnly) {
  int64_t n = 0;
  for (const auto& p : module().parameters())
    if (!trainableOnly || p.requires_grad()) n += p.numel();
  return n;
}

LoadReport Detector::load(NamedTensors file, LoadOptions options, bool backboneOnly) {
  if (backboneOnly) options.keyFilter = [this](const std::string& key) { return isBackboneKey(key); };
  return loadStateDict(module(), std::move(file), options);
}

void Detector::save(const std::string& path, const std::map<std::string, std::string>& metadata) {
  writeSafetensors(path, stateDict(module()), metadata);
}

RetinaNetDetector::RetinaNetDetector(const RetinaNetConfig& config, const torch::Device& device) : Detector(device), net_(config) {
  net_->to(device);
}

RetinaNetOutput RetinaNetDetector::forward(const torch::Tensor& images) {
  const c10::DeviceGuard guard(device());  // worker threads start without a current CUDA device
  return net_->forward(images);
}

NamedOutputs RetinaNetDetector::forwardNamed(const torch::Tensor& images) {
  const auto o = forward(images);
  NamedOutputs out{{"c3", o.backbone.c3}, {"c4", o.backbone.c4}, {"c5", o.backbone.c5}};
  for (size_t l = 0; l < o.pyramid.size(); ++l) out.emplace_back("p" + std::to_string(l + 3), o.pyramid[l]);
  out.emplace_back("regression", o.regression);
  out.emplace_back("classification", o.classification);
  out.emplace_back("anchors", o.anchors);
  return out;
}

Detections RetinaNetDetector::detect(const torch::Tensor& images, const torch::Tensor& scales, const torch::Tensor& sizes,
                                     const DetectOptions& opts) {
  const c10::DeviceGuard guard(device());
  return net_->detect(images, scales, sizes, opts);
}

NanoDetPlusDetector::NanoDetPlusDetector(const NanoDetPlusConfig& config, const torch::Device& device) : Detector(device), net_(config) {
  net_->to(device);
}

DetectOptions NanoDetPlusDetector::defaultDetectOptions() const {
  DetectOptions d;
  d.scoreThreshold = 0.05;
  d.topkCandidates = 0;
  d.nmsThreshold = 0.6;
  d.maxDetections = 100;
  return d;
}

NamedOutputs NanoDetPlusDetector::forwardNamed(const torch::Tensor& images) {
  const c10::DeviceGuard guard(device());
  const auto o = net_->forward(images);
  const int64_t C = net_->config().numClasses;
  NamedOutputs out{{"c3", o.backbone.c3}, {"c4", o.backbone.c4}, {"c5", o.backbone.c5}};
  for (size_t l = 0; l < o.pyramid.size(); ++l) out.emplace_back("p" + std::to_string(l + 3), o.pyramid[l]);
  out.emplace_back("preds", o.preds);
  out.emplace_back("classification", o.preds.narrow(2, 0, C));
  out.emplace_back("distribution", o.preds.narrow(2, C, o.preds.size(2) - C));
  out.emplace_back("boxes", decodeDistributionBoxes(o.preds, o.priors, C, net_->config().regMax));
  out.emplace_back("priors", o.priors);
  return out;
}

Detections NanoDetPlusDetector::detect(const torch::Tensor& images, const torch::Tensor& scales, const torch::Tensor& sizes,
                                       const DetectOptions& opts) {
  const c10::DeviceGuard guard(device());
  return net_->detect(images, scales, sizes, opts);
}

}  // namespace onestage
