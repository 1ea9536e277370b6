// Model exports: creation, mode and device, forward and detect (async), weights in and out.
#include <napi.h>

#include "binding/configs.h"
#include "binding/model_handle.h"
#include "binding/napi_util.h"
#include "core/autocast.h"
#include "core/models/frozen_bn.h"
#include "core/models/resnet.h"
#include "core/errors.h"
#include "core/models/detector.h"
#include "core/tensor_types.h"

namespace onestage::binding {

namespace {
constexpr napi_type_tag kModelTag = {0x6f6e657374616765ULL, 0x4d6f64656c000001ULL};
}  // namespace

std::shared_ptr<Detector> modelArg(const Napi::CallbackInfo& info, size_t i) {
  return objectArg<Detector>(info, i, "model", &kModelTag, "Model");
}

namespace {

/// Builds a detector of type D from options (device, seed and the architecture's fields).
template <typename D, typename Config>
Napi::Value createModel(const Napi::CallbackInfo& info, Config (*configFrom)(const Napi::Object&)) {
  const auto opts = optionsArg(info, 0, "options");
  const auto config = configFrom(opts);
  const auto device = parseDevice(optString(opts, "options", "device", "cpu"), "options.device");
  const int64_t seed = optInt(opts, "options", "seed", -1, 9007199254740991LL, -1);
  if (seed >= 0) torch::manual_seed(static_cast<uint64_t>(seed));
  return wrapObject<Detector>(info.Env(), std::make_shared<D>(config, device), &kModelTag);
}

Napi::Value ModelCreateRetinaNet(const Napi::CallbackInfo& info) { return createModel<RetinaNetDetector>(info, retinaNetConfigFrom); }

Napi::Value ModelCreateNanoDetPlus(const Napi::CallbackInfo& info) { return createModel<NanoDetPlusDetector>(info, nanodetPlusConfigFrom); }

Napi::Value ModelDispose(const Napi::CallbackInfo& info) {
  auto* box = objectBoxArg<Detector>(info, 0, "model", &kModelTag, "Model");
  const bool live = box->object != nullptr;
  box->object.reset();
  return Napi::Boolean::New(info.Env(), live);
}

Napi::Value ModelInfo(const Napi::CallbackInfo& info) {
  auto m = modelArg(info);
  std::lock_guard<std::mutex> lock(m->mutex());
  Napi::Env env = info.Env();
  Napi::Object out = Napi::Object::New(env);
  out.Set("architecture", m->architecture());
  out.Set("numClasses", static_cast<double>(m->numClasses()));
  if (auto* r = dynamic_cast<RetinaNetDetector*>(m.get())) {
    const auto& c = r->net()->config();
    out.Set("depth", static_cast<double>(c.depth));
    out.Set("featureSize", static_cast<double>(c.featureSize));
    out.Set("anchorsPerLocation", static_cast<double>(c.anchors.anchorsPerLocation()));
    out.Set("freezeBn", c.freezeBn);
    out.Set("freezeBnAffine", c.freezeBnAffine);
  } else if (auto* n = dynamic_cast<NanoDetPlusDetector*>(m.get())) {
    const auto& c = n->net()->config();
    out.Set("depth", static_cast<double>(c.depth));
    out.Set("featureSize", static_cast<double>(c.fpnChannels));
    out.Set("regMax", static_cast<double>(c.regMax));
    out.Set("aux", c.aux);
    out.Set("freezeBn", c.freezeBn);
    out.Set("freezeBnAffine", false);
  }
  out.Set("device", deviceName(m->device()));
  out.Set("training", m->training());
  out.Set("channelsLast", m->channelsLast());
  out.Set("parameters", static_cast<double>(m->parameterCount(false)));
  out.Set("trainableParameters", static_cast<double>(m->parameterCount(true)));
  return out;
}

Napi::Value ModelSetTraining(const Napi::CallbackInfo& info) {
  auto m = modelArg(info);
  const bool on = boolArg(info, 1, "training");
  std::lock_guard<std::mutex> lock(m->mutex());
  m->setTraining(on);
  return info.Env().Undefined();
}

Napi::Value ModelTo(const Napi::CallbackInfo& info) {
  auto m = modelArg(info);
  const auto device = parseDevice(stringArg(info, 1, "device"));
  std::lock_guard<std::mutex> lock(m->mutex());
  m->to(device);
  return info.Env().Undefined();
}

Napi::Value ModelSetChannelsLast(const Napi::CallbackInfo& info) {
  auto m = modelArg(info);
  const bool on = boolArg(info, 1, "channelsLast");
  std::lock_guard<std::mutex> lock(m->mutex());
  m->setChannelsLast(on);
  return info.Env().Undefined();
}

Napi::Value ModelForwardAsync(const Napi::CallbackInfo& info) {
  auto m = modelArg(info);
  auto images = tensorArg(info, 1, "images");
  const bool amp = optBool(optionsArg(info, 2, "options"), "options", "amp", false);
  if (amp && !m->device().is_cuda())
    throw Napi::RangeError::New(info.Env(), "amp (bf16 autocast) needs a model on CUDA; this one is on " + m->device().str());
  using Named = std::vector<std::pair<std::string, torch::Tensor>>;
  return PromiseWorker<Named>::start(
      info.Env(),
      [m, images, amp] {
        std::lock_guard<std::mutex> lock(m->mutex());
        return m->onDeviceThread([&] {
          torch::NoGradGuard noGrad;
          Named out;
          {
            // as detect's amp: bf16 autocast with the convolution weights' bf16 copies
            const Bf16Forward bf16(m->module(), m->device(), amp, ConvWeightCopies::Purpose::detection);
            const FoldedBatchNorms folds(amp ? reluBatchNormPairs(m->module()) : ConvBatchNormPairs{});
            out = m->forwardNamed(images);
          }
          // floating outputs in float32, as without amp
          for (auto& [name, t] : out)
            if (t.is_floating_point() && t.scalar_type() != torch::kFloat32) t = t.to(torch::kFloat32);
          return out;
        });
      },
      [](Napi::Env env, Named& named) -> Napi::Value {
        Napi::Object out = Napi::Object::New(env);
        for (auto& [k, t] : named) out.Set(k, wrapTensor(env, t));
        return out;
      });
}

struct HostDetections {
  torch::Tensor boxes, scores, labels, count;
};

Napi::Value ModelDetectAsync(const Napi::CallbackInfo& info) {
  auto m = modelArg(info);
  auto images = tensorArg(info, 1, "images");
  auto scales = tensorArg(info, 2, "scales");
  auto sizes = tensorArg(info, 3, "sizes");
  const auto opts = detectOptionsFrom(optionsArg(info, 4, "options"), m->defaultDetectOptions());
  return PromiseWorker<HostDetections>::start(
      info.Env(),
      [m, images, scales, sizes, opts] {
        std::lock_guard<std::mutex> lock(m->mutex());
        return m->onDeviceThread([&] {
          const auto x = images.to(m->device());
          const auto d = opts.cudaGraph ? m->detectGraphed(x, scales, sizes, opts) : m->detect(x, scales, sizes, opts);
          return HostDetections{d.boxes.to(torch::kCPU, torch::kFloat32).contiguous(),
                                d.scores.to(torch::kCPU, torch::kFloat32).contiguous(),
                                d.labels.to(torch::kCPU, torch::kInt32).contiguous(), d.count.to(torch::kCPU)};
        });
      },
      [](Napi::Env env, HostDetections& d) -> Napi::Value {
        const int64_t B = d.boxes.size(0), D = d.boxes.size(1);
        Napi::Array out = Napi::Array::New(env, B);
        for (int64_t b = 0; b < B; ++b) {
          const int64_t n = d.count[b].item<int64_t>();
          auto boxes = Napi::Float32Array::New(env, n * 4);
          auto scores = Napi::Float32Array::New(env, n);
          auto labels = Napi::Int32Array::New(env, n);
          std::memcpy(boxes.Data(), d.boxes.data_ptr<float>() + b * D * 4, n * 4 * sizeof(float));
          std::memcpy(scores.Data(), d.scores.data_ptr<float>() + b * D, n * sizeof(float));
          std::memcpy(labels.Data(), d.labels.data_ptr<int32_t>() + b * D, n * sizeof(int32_t));
          Napi::Object o = Napi::Object::New(env);
          o.Set("boxes", boxes);
          o.Set("scores", scores);
          o.Set("labels", labels);
          out.Set(static_cast<uint32_t>(b), o);
        }
        return out;
      });
}

LoadOptions loadOptionsFrom(const Napi::Object& o) {
  LoadOptions l;
  l.strict = optBool(o, "options", "strict", true);
  l.stripPrefix = optString(o, "options", "prefix", "");
  l.finetune = optBool(o, "options", "finetune", false);
  return l;
}

Napi::Value reportToJs(Napi::Env env, const LoadReport& r) {
  auto list = [&](const std::vector<std::string>& v) {
    Napi::Array a = Napi::Array::New(env, v.size());
    for (size_t i = 0; i < v.size(); ++i) a.Set(static_cast<uint32_t>(i), v[i]);
    return a;
  };
  Napi::Object o = Napi::Object::New(env);
  o.Set("loaded", static_cast<double>(r.loaded));
  o.Set("missing", list(r.missing));
  o.Set("unexpected", list(r.unexpected));
  o.Set("mismatched", list(r.mismatched));
  o.Set("reinitialized", list(r.reinitialized));
  return o;
}

Napi::Value ModelLoadTorchAsync(const Napi::CallbackInfo& info) {
  auto m = modelArg(info);
  const auto path = stringArg(info, 1, "path");
  const auto o = optionsArg(info, 2, "options");
  const auto opts = loadOptionsFrom(o);
  const bool backboneOnly = optBool(o, "options", "backboneOnly", false);
  return PromiseWorker<LoadReport>::start(
      info.Env(),
      [m, path, opts, backboneOnly] {
        auto file = readTorchStateDict(path);
        std::lock_guard<std::mutex> lock(m->mutex());
        return m->load(std::move(file), opts, backboneOnly);
      },
      reportToJs);
}

Napi::Value ModelLoadSafetensorsAsync(const Napi::CallbackInfo& info) {
  auto m = modelArg(info);
  const auto path = stringArg(info, 1, "path");
  const int64_t dataStart = intArg(info, 2, "dataStart", 8, 1LL << 50);
  Napi::Value ev = arg(info, 3);
  if (!ev.IsArray()) throw Napi::TypeError::New(info.Env(), "Expected an array for entries but received " + describeValue(ev));
  std::vector<SafetensorsEntry> entries;
  auto arr = ev.As<Napi::Array>();
  for (uint32_t k = 0; k < arr.Length(); ++k) {
    Napi::Value e = arr.Get(k);
    if (!e.IsObject()) throw Napi::TypeError::New(info.Env(), "Expected an object for entries[" + std::to_string(k) + "]");
    auto eo = e.As<Napi::Object>();
    SafetensorsEntry s;
    s.name = optString(eo, "entry", "name", "");
    s.dtype = optString(eo, "entry", "dtype", "");
    for (double d : optNumbers(eo, "entry", "shape", {})) {
      if (d < 0 || d != std::floor(d)) throw Napi::RangeError::New(info.Env(), "entry " + s.name + " has a bad shape");
      s.shape.push_back(static_cast<int64_t>(d));
    }
    s.begin = optInt(eo, "entry", "begin", 0, 1LL << 50, 0);
    s.end = optInt(eo, "entry", "end", 0, 1LL << 50, 0);
    entries.push_back(std::move(s));
  }
  const auto o = optionsArg(info, 4, "options");
  const auto opts = loadOptionsFrom(o);
  const bool backboneOnly = optBool(o, "options", "backboneOnly", false);
  return PromiseWorker<LoadReport>::start(
      info.Env(),
      [m, path, dataStart, entries, opts, backboneOnly] {
        auto file = readSafetensors(path, dataStart, entries);
        std::lock_guard<std::mutex> lock(m->mutex());
        return m->load(std::move(file), opts, backboneOnly);
      },
      reportToJs);
}

Napi::Value ModelSaveSafetensorsAsync(const Napi::CallbackInfo& info) {
  auto m = modelArg(info);
  const auto path = stringArg(info, 1, "path");
  const std::string suffix = ".safetensors";
  if (path.size() <= suffix.size() || path.compare(path.size() - suffix.size(), suffix.size(), suffix) != 0)
    throw Napi::RangeError::New(info.Env(), "Expected a path ending in .safetensors for path but received '" + path + "'");
  const auto metaObj = optionsArg(info, 2, "metadata");
  std::map<std::string, std::string> meta;
  auto names = metaObj.GetPropertyNames();
  for (uint32_t k = 0; k < names.Length(); ++k) {
    const auto key = names.Get(k).As<Napi::String>().Utf8Value();
    Napi::Value v = metaObj.Get(key);
    if (!v.IsString())
      throw Napi::TypeError::New(info.Env(), "Expected a string for metadata." + key + " but received " + describeValue(v));
    meta[key] = v.As<Napi::String>().Utf8Value();
  }
  return PromiseWorker<bool>::start(
      info.Env(),
      [m, path, meta] {
        std::lock_guard<std::mutex> lock(m->mutex());
        m->save(path, meta);
        return true;
      },
      [](Napi::Env env, bool&) -> Napi::Value { return env.Undefined(); });
}

Napi::Value ModelStateDict(const Napi::CallbackInfo& info) {
  auto m = modelArg(info);
  std::lock_guard<std::mutex> lock(m->mutex());
  Napi::Object out = Napi::Object::New(info.Env());
  for (auto& [k, t] : m->namedState()) out.Set(k, wrapTensor(info.Env(), t.detach().clone()));
  return out;
}

/// Names and shapes of the tensors of a torch.save'd state_dict (read with the restricted unpickler).
Napi::Value TorchFileEntries(const Napi::CallbackInfo& info) {
  const auto path = stringArg(info, 0, "path");
  const auto file = readTorchStateDict(path);
  Napi::Array out = Napi::Array::New(info.Env(), file.size());
  for (size_t i = 0; i < file.size(); ++i) {
    Napi::Object e = Napi::Object::New(info.Env());
    e.Set("name", file[i].first);
    Napi::Array shape = Napi::Array::New(info.Env(), file[i].second.dim());
    for (int64_t d = 0; d < file[i].second.dim(); ++d) shape.Set(static_cast<uint32_t>(d), static_cast<double>(file[i].second.size(d)));
    e.Set("shape", shape);
    out.Set(static_cast<uint32_t>(i), e);
  }
  return out;
}

}  // namespace

void registerModelExports(Napi::Env env, Napi::Object exports) {
  exportFunction<ModelCreateRetinaNet>(env, exports, "modelCreateRetinaNet");
  exportFunction<ModelCreateNanoDetPlus>(env, exports, "modelCreateNanoDetPlus");
  exportFunction<ModelDispose>(env, exports, "modelDispose");
  exportFunction<ModelInfo>(env, exports, "modelInfo");
  exportFunction<ModelSetTraining>(env, exports, "modelSetTraining");
  exportFunction<ModelTo>(env, exports, "modelTo");
  exportFunction<ModelSetChannelsLast>(env, exports, "modelSetChannelsLast");
  exportFunction<ModelForwardAsync>(env, exports, "modelForwardAsync");
  exportFunction<ModelDetectAsync>(env, exports, "modelDetectAsync");
  exportFunction<ModelLoadTorchAsync>(env, exports, "modelLoadTorchAsync");
  exportFunction<ModelLoadSafetensorsAsync>(env, exports, "modelLoadSafetensorsAsync");
  exportFunction<ModelSaveSafetensorsAsync>(env, exports, "modelSaveSafetensorsAsync");
  exportFunction<ModelStateDict>(env, exports, "modelStateDict");
  exportFunction<TorchFileEntries>(env, exports, "torchFileEntries");
}

}  // namespace onestage::binding
