// A detector owned by JavaScript: the network, the device it lives on, and a mutex that serialises
// every operation on it (forward, detect, training steps, weight loading, moves), so concurrent
// async calls from JavaScript never race on parameters or BatchNorm statistics. `Detector` is what
// every architecture shares; RetinaNetDetector and NanoDetPlusDetector add their own network.
#pragma once
#include <torch/torch.h>

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "core/capture_lock.h"
#include "core/device_thread.h"
#include "core/models/nanodet_plus.h"
#include "core/models/retinanet.h"
#include "core/weights.h"

namespace onestage {

using NamedOutputs = std::vector<std::pair<std::string, torch::Tensor>>;

class Detector {
 public:
  explicit Detector(const torch::Device& device);
  virtual ~Detector();
  Detector(const Detector&) = delete;
  Detector& operator=(const Detector&) = delete;

  virtual std::string architecture() const = 0;
  virtual int64_t numClasses() const = 0;
  /// The network as a module (parameters, buffers, state_dict).
  virtual torch::nn::Module& module() = 0;
  /// Detection defaults of this architecture (NMS threshold, candidates).
  virtual DetectOptions defaultDetectOptions() const { return {}; }
  /// Raw outputs of a forward pass (no gradient), by name.
  virtual NamedOutputs forwardNamed(const torch::Tensor& images) = 0;
  virtual Detections detect(const torch::Tensor& images, const torch::Tensor& scales, const torch::Tensor& sizes,
                            const DetectOptions& opts) = 0;
  /// detect() as a CUDA graph (DetectOptions::cudaGraph; a model on CUDA, topkCandidates > 0): after
  /// kDetectWarmupCalls eager calls with one input shape and set of options, forward and
  /// post-processing are captured and every later call of that shape copies its inputs into the graph's
  /// static ones and replays it (the same kernels: the same detections). Up to kMaxDetectGraphs shapes
  /// are kept (least recently used dropped; their activations share one memory pool); a change of any
  /// parameter's or buffer's storage (loading replaced, moved, channels-last) drops them all. A capture
  /// that fails is an error naming the cause. Returns tensors of its own (copies of the graph's outputs).
  Detections detectGraphed(const torch::Tensor& images, const torch::Tensor& scales, const torch::Tensor& sizes, const DetectOptions& opts);
  /// Parameter names of the backbone (for backbone-only weight loading).
  virtual bool isBackboneKey(const std::string& key) const = 0;
  /// State-dict names as files carry them (torchvision variants: torchvision's), and back (also
  /// accepting older layouts of the same weights).
  virtual std::string externalKey(const std::string& key) const { return key; }
  virtual std::string internalKey(const std::string& key) const { return key; }
  /// The classification output layer (its shape depends on the class count); re-initialised with the prior.
  virtual bool isClassifierKey(const std::string&) const { return false; }
  virtual void reinitialiseClassifier() {}
  /// The state dict under external names.
  NamedTensors namedState();

  std::mutex& mutex() { return mutex_; }
  torch::Device device() const { return device_; }
  /// Runs `job` on the model's own thread when it lives on CUDA (core/device_thread.h), directly on the
  /// CPU. Call it holding mutex(), never from inside a job; jobs do not take mutex() themselves.
  template <class F>
  auto onDeviceThread(F job) -> decltype(job()) {
    if (!device_.is_cuda()) return job();
    if (!deviceThread_) deviceThread_ = std::make_unique<DeviceThread>();
    const torch::Device device = device_;
    return deviceThread_->run([&job, device] {
      const c10::DeviceGuard onDevice(device);
      const CudaWorkScope work;  // a graph capture (elsewhere) waits for this job, and this job for it
      return job();
    });
  }
  void to(const torch::Device& device);
  void setTraining(bool on) { module().train(on); }
  /// 4-D weights (convolutions) in channels-last memory order (NHWC), or back to contiguous NCHW; the
  /// backbone converts its input to the weights' order. Values are unchanged; cuDNN's tensor-core
  /// kernels work in NHWC, so on CUDA this saves the layout conversions around every convolution.
  void setChannelsLast(bool on);
  bool channelsLast();
  bool training() { return module().is_training(); }
  /// All parameters, and those that get gradients.
  int64_t parameterCount(bool trainableOnly);

  /// backboneOnly: only conv1, bn1, layer1..4 are loaded and required (torchvision resnet files).
  LoadReport load(NamedTensors file, LoadOptions options, bool backboneOnly);
  void save(const std::string& path, const std::map<std::string, std::string>& metadata);

 private:
  torch::Device device_;
  std::mutex mutex_;
  std::unique_ptr<DeviceThread> deviceThread_;  // created at the first CUDA job
  struct DetectGraphs;  // detectGraphed's captures (CUDA builds)
  std::unique_ptr<DetectGraphs> detectGraphs_;
};

/// Eager detect() calls of one shape before detectGraphed captures it (cuDNN's benchmark, anchors).
constexpr int64_t kDetectWarmupCalls = 2;
/// Shapes detectGraphed keeps captured at once.
constexpr size_t kMaxDetectGraphs = 4;

class RetinaNetDetector : public Detector {
 public:
  RetinaNetDetector(const RetinaNetConfig& config, const torch::Device& device);
  RetinaNet& net() { return net_; }
  std::string architecture() const override { return "retinanet"; }
  int64_t numClasses() const override { return net_->config().numClasses; }
  torch::nn::Module& module() override { return *net_; }
  RetinaNetOutput forward(const torch::Tensor& images);
  NamedOutputs forwardNamed(const torch::Tensor& images) override;
  Detections detect(const torch::Tensor& images, const torch::Tensor& scales, const torch::Tensor& sizes, const DetectOptions& opts) override;
  bool isBackboneKey(const std::string& key) const override { return net_->isBackboneKey(key); }
  DetectOptions defaultDetectOptions() const override;
  std::string externalKey(const std::string& key) const override;
  std::string internalKey(const std::string& key) const override;
  bool isClassifierKey(const std::string& key) const override { return key.rfind("classificationModel.output.", 0) == 0; }
  void reinitialiseClassifier() override { net_->reinitialiseClassifier(); }

 private:
  RetinaNet net_;
};

class NanoDetPlusDetector : public Detector {
 public:
  NanoDetPlusDetector(const NanoDetPlusConfig& config, const torch::Device& device);
  NanoDetPlus& net() { return net_; }
  std::string architecture() const override { return "nanodet-plus"; }
  int64_t numClasses() const override { return net_->config().numClasses; }
  torch::nn::Module& module() override { return *net_; }
  /// NanoDet-Plus' post-processing: every (prior, class) above 0.05, NMS IoU 0.6, at most 100.
  DetectOptions defaultDetectOptions() const override;
  NamedOutputs forwardNamed(const torch::Tensor& images) override;
  Detections detect(const torch::Tensor& images, const torch::Tensor& scales, const torch::Tensor& sizes, const DetectOptions& opts) override;
  bool isBackboneKey(const std::string& key) const override { return net_->isBackboneKey(key); }
  /// torchvision's shufflenet_v2_x* state_dicts (conv1.*, stage2–4.*) go to the ShuffleNetV2 backbone (backbone.*).
  std::string internalKey(const std::string& key) const override;

 private:
  NanoDetPlus net_;
};

}  // namespace onestage
