#include "core/models/detector.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <iterator>

#include "core/errors.h"
#include "core/losses/nanodet_loss.h"
#include "core/tensor_types.h"

#ifdef ONESTAGE_WITH_CUDA
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGraph.h>

#include "core/graph_capture.h"
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace onestage {

/// detectGraphed's captures: per key (input shape and options) the graph, its static inputs and
/// outputs; least recently used first.
struct Detector::DetectGraphs {
#ifdef ONESTAGE_WITH_CUDA
  struct Captured {
    std::vector<double> key;
    std::unique_ptr<at::cuda::CUDAGraph> graph;
    torch::Tensor images, scales, sizes;
    Detections out;
  };
  explicit DetectGraphs(const torch::Device& device) : stream(c10::cuda::getStreamFromPool(false, device.index())) {}
  c10::cuda::CUDAStream stream;  // captures need a side stream; replays run there too
  std::vector<Captured> captured;
  std::map<std::vector<double>, int64_t> seen;  // eager calls per key
  size_t storage = 0;                           // fingerprint of the weights' storage the graphs read
  GraphPool pool{0, 0};
  void clear() {
    captured.clear();
    seen.clear();
    pool = {0, 0};
  }
#endif
};

Detector::Detector(const torch::Device& device) : device_(device) { requireDeviceAvailable(device); }

Detector::~Detector() = default;

Detections Detector::detectGraphed(const torch::Tensor& images, const torch::Tensor& scales, const torch::Tensor& sizes, const DetectOptions& opts) {
  if (!device_.is_cuda()) throw RangeError("cudaGraph needs a model on CUDA; this one is on " + device_.str());
  if (opts.topkCandidates <= 0)
    throw RangeError("cudaGraph needs topkCandidates > 0 (every candidate above the threshold is a count known only after the forward)");
#ifdef ONESTAGE_WITH_CUDA
  checkDetectorInput(images, device_);
  checkFrameShapes(images.size(0), scales, sizes);
  const c10::DeviceGuard guard(device_);
  torch::NoGradGuard noGrad;
  if (!detectGraphs_) detectGraphs_ = std::make_unique<DetectGraphs>(device_);
  auto& g = *detectGraphs_;
  // the graphs read the parameters and buffers where they were at the capture
  size_t storage = 0;
  const auto mix = [&storage](size_t v) { storage ^= v + 0x9e3779b97f4a7c15ULL + (storage << 6) + (storage >> 2); };
  for (const auto& t : module().parameters()) mix(reinterpret_cast<size_t>(t.data_ptr()));
  for (const auto& t : module().buffers()) mix(reinterpret_cast<size_t>(t.data_ptr()));
  if (storage != g.storage) {
    g.clear();
    g.storage = storage;
  }
  std::vector<double> key;
  for (const auto d : images.sizes()) key.push_back(static_cast<double>(d));
  key.insert(key.end(), {opts.scoreThreshold, static_cast<double>(opts.topkCandidates), opts.nmsThreshold, static_cast<double>(opts.maxDetections),
                         opts.amp ? 1.0 : 0.0});
  auto found = std::find_if(g.captured.begin(), g.captured.end(), [&key](const DetectGraphs::Captured& c) { return c.key == key; });
  if (found == g.captured.end() && ++g.seen[key] <= kDetectWarmupCalls) return detect(images, scales, sizes, opts);
  const auto outer = c10::cuda::getCurrentCUDAStream(device_.index());
  at::cuda::CUDAEvent ready, done;
  ready.record(outer);
  ready.block(g.stream);
  Detections result;
  {
    const c10::cuda::CUDAStreamGuard onSide(g.stream);
    const auto f32 = torch::TensorOptions().dtype(torch::kFloat32).device(device_);
    if (found == g.captured.end()) {
      if (g.captured.size() >= kMaxDetectGraphs) g.captured.erase(g.captured.begin());
      DetectGraphs::Captured c;
      c.key = key;
      c.images = torch::empty(images.sizes(), f32);
      // the static inputs; their values are copied in before every replay (a capture runs nothing)
      c.scales = torch::empty(scales.sizes(), f32);
      c.sizes = torch::empty(sizes.sizes(), f32);
      {
        const CaptureScope capturing;  // no other CUDA work of the library meanwhile (core/capture_lock.h)
        g.stream.synchronize();
        if (g.captured.empty()) g.pool = {0, 0};
        std::unique_ptr<at::cuda::CUDAGraph> graph;
        try {
          graph = captureGraph(g.pool, [&] { c.out = detect(c.images, c.scales, c.sizes, opts); }, "cudaGraph: detect could not be captured as a CUDA graph");
        } catch (const std::exception& e) {
          g.seen.erase(key);
          throw std::runtime_error(std::string(e.what()) + "; detect with cudaGraph false");
        }
        if (g.captured.empty()) g.pool = graph->pool();
        c.graph = std::move(graph);
      }
      g.seen.erase(key);
      g.captured.push_back(std::move(c));
      found = std::prev(g.captured.end());
    } else {
      // most recently used last
      std::rotate(found, std::next(found), g.captured.end());
      found = std::prev(g.captured.end());
    }
    auto& c = *found;
    c.images.copy_(images);
    c.scales.copy_(scales);
    c.sizes.copy_(sizes);
    c.graph->replay();
    // the graph's outputs are rewritten by its next replay: the caller gets copies
    result = Detections{c.out.boxes.clone(), c.out.scores.clone(), c.out.labels.clone(), c.out.count.clone()};
    // made on the side stream, read on the caller's
    for (auto* t : {&result.boxes, &result.scores, &result.labels, &result.count}) t->record_stream(outer);
  }
  done.record(g.stream);
  done.block(outer);
  return result;
#else
  (void)images;
  (void)scales;
  (void)sizes;
  (void)opts;
  throw std::logic_error("cudaGraph without CUDA");
#endif
}

void Detector::to(const torch::Device& device) {
  requireDeviceAvailable(device);
  module().to(device);
  device_ = device;
}

void Detector::setChannelsLast(bool on) {
  torch::NoGradGuard noGrad;
  const auto format = on ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  // set_data keeps each parameter's identity (optimizers and sessions hold the same tensors). The
  // strides are set explicitly: `contiguous(format)` leaves a 1×1 kernel [O, I, 1, 1] or a depthwise
  // one [C, 1, k, k] as it is (its memory is in both orders at once), and with NCHW strides such a
  // weight does not ask for channels-last, so its convolution follows the input's layout — after one
  // NCHW tensor, a whole network would fall back to NCHW (and on CUDA, to ATen's own depthwise kernels).
  for (auto& p : module().parameters()) {
    if (p.dim() != 4 || p.suggest_memory_format() == format) continue;
    p.set_data(torch::empty(p.sizes(), p.options().memory_format(format)).copy_(p.data()));
  }
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
  options.fileKey = [this](const std::string& key) { return internalKey(key); };
  options.displayKey = [this](const std::string& key) { return externalKey(key); };
  options.classifierKey = [this](const std::string& key) { return isClassifierKey(key); };
  auto report = loadStateDict(module(), std::move(file), options);
  if (!report.reinitialized.empty()) reinitialiseClassifier();
  return report;
}

NamedTensors Detector::namedState() {
  auto state = stateDict(module());
  for (auto& kv : state) kv.first = externalKey(kv.first);
  return state;
}

void Detector::save(const std::string& path, const std::map<std::string, std::string>& metadata) {
  writeSafetensors(path, namedState(), metadata);
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
  if (opts.amp && !device().is_cuda()) throw RangeError("amp (bf16 autocast) needs a model on CUDA; this one is on " + device().str());
  const c10::DeviceGuard guard(device());
  return net_->detect(images, scales, sizes, opts);
}

DetectOptions RetinaNetDetector::defaultDetectOptions() const {
  DetectOptions d;
  if (net_->config().variant != "pytorch-retinanet") d.maxDetections = 300;  // torchvision's detections_per_img
  return d;
}

namespace {
bool startsWith(const std::string& s, const std::string& p) { return s.rfind(p, 0) == 0; }
// torchvision's head module of onestage's subnet and its output conv
const std::vector<std::array<std::string, 3>> kTorchvisionHeads{{"classificationModel.", "head.classification_head.", "cls_logits"},
                                                                {"regressionModel.", "head.regression_head.", "bbox_reg"}};
}  // namespace

std::string RetinaNetDetector::externalKey(const std::string& key) const {
  if (net_->config().variant == "pytorch-retinanet") return key;
  if (isResNetBackboneKey(key)) return "backbone.body." + key;
  if (startsWith(key, "fpn.")) {
    const std::string rest = key.substr(4);
    for (int l = 3; l <= 5; ++l) {
      const std::string lv = "P" + std::to_string(l);
      if (startsWith(rest, lv + "_1.")) return "backbone.fpn.inner_blocks." + std::to_string(l - 3) + ".0." + rest.substr(5);
      if (startsWith(rest, lv + "_2.")) return "backbone.fpn.layer_blocks." + std::to_string(l - 3) + ".0." + rest.substr(5);
    }
    if (startsWith(rest, "P6.")) return "backbone.fpn.extra_blocks.p6." + rest.substr(3);
    if (startsWith(rest, "P7_2.")) return "backbone.fpn.extra_blocks.p7." + rest.substr(5);
  }
  for (const auto& [ours, theirs, out] : kTorchvisionHeads) {
    if (!startsWith(key, ours)) continue;
    const std::string rest = key.substr(ours.size());
    if (startsWith(rest, "output.")) return theirs + out + rest.substr(6);
    if (rest.size() > 6 && (startsWith(rest, "conv") || startsWith(rest, "gn")) && std::isdigit(static_cast<unsigned char>(rest[rest[0] == 'c' ? 4 : 2]))) {
      const bool conv = rest[0] == 'c';
      const size_t digit = conv ? 4 : 2;
      const int i = rest[digit] - '1';
      return theirs + "conv." + std::to_string(i) + (conv ? ".0" : ".1") + rest.substr(digit + 1);
    }
  }
  return key;
}

std::string RetinaNetDetector::internalKey(const std::string& key) const {
  if (net_->config().variant == "pytorch-retinanet") return key;
  if (startsWith(key, "backbone.body.")) return key.substr(14);
  const auto split = [](const std::string& s) {
    std::vector<std::string> parts;
    size_t start = 0;
    for (size_t dot; (dot = s.find('.', start)) != std::string::npos; start = dot + 1) parts.push_back(s.substr(start, dot - start));
    parts.push_back(s.substr(start));
    return parts;
  };
  const auto parts = split(key);
  const auto isIndex = [](const std::string& s) { return !s.empty() && s.size() < 3 && std::all_of(s.begin(), s.end(), ::isdigit); };
  if (startsWith(key, "backbone.fpn.") && parts.size() >= 5) {
    const std::string& block = parts[2];
    if ((block == "inner_blocks" || block == "layer_blocks") && isIndex(parts[3])) {
      const int l = std::stoi(parts[3]) + 3;
      // current layout blocks.i.0.weight; older torchvision files blocks.i.weight
      const std::string& leaf = parts.size() == 6 && parts[4] == "0" ? parts[5] : parts[4];
      return "fpn.P" + std::to_string(l) + (block == "inner_blocks" ? "_1." : "_2.") + leaf;
    }
    if (block == "extra_blocks" && parts[3] == "p6") return "fpn.P6." + parts[4];
    if (block == "extra_blocks" && parts[3] == "p7") return "fpn.P7_2." + parts[4];
  }
  for (const auto& [ours, theirs, out] : kTorchvisionHeads) {
    if (!startsWith(key, theirs)) continue;
    const auto p = split(key.substr(theirs.size()));
    if (p.size() == 2 && p[0] == out) return ours + "output." + p[1];
    if (p.size() == 4 && p[0] == "conv" && isIndex(p[1]) && (p[2] == "0" || p[2] == "1"))
      return ours + (p[2] == "0" ? "conv" : "gn") + std::to_string(std::stoi(p[1]) + 1) + "." + p[3];
    // older torchvision files: conv.{0,2,4,6} (convs between ReLUs)
    if (p.size() == 3 && p[0] == "conv" && isIndex(p[1]) && std::stoi(p[1]) % 2 == 0) return ours + "conv" + std::to_string(std::stoi(p[1]) / 2 + 1) + "." + p[2];
  }
  return key;
}

NanoDetPlusDetector::NanoDetPlusDetector(const NanoDetPlusConfig& config, const torch::Device& device) : Detector(device), net_(config) {
  net_->to(device);
}

std::string NanoDetPlusDetector::internalKey(const std::string& key) const {
  if (net_->config().backbone != "shufflenetv2") return key;
  for (const char* p : {"conv1.", "stage2.", "stage3.", "stage4."})
    if (startsWith(key, p)) return "backbone." + key;
  return key;
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
  if (opts.amp && !device().is_cuda()) throw RangeError("amp (bf16 autocast) needs a model on CUDA; this one is on " + device().str());
  const c10::DeviceGuard guard(device());
  return net_->detect(images, scales, sizes, opts);
}

}  // namespace onestage
