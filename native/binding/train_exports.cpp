// Training exports: a session (model + loss + optimizer) and its step, run on the thread pool.
#include <napi.h>

#include "binding/configs.h"
#include "binding/dist_handle.h"
#include "binding/model_handle.h"
#include "binding/napi_util.h"
#include "core/train/training_session.h"

namespace onestage::binding {

namespace {

constexpr napi_type_tag kSessionTag = {0x6f6e657374616765ULL, 0x547261696e000001ULL};

std::shared_ptr<TrainingSession> sessionArg(const Napi::CallbackInfo& info) {
  return objectArg<TrainingSession>(info, 0, "session", &kSessionTag, "TrainingSession");
}

OptimizerOptions optimizerOptionsFrom(const Napi::Object& o) {
  OptimizerOptions p;
  p.type = optString(o, "optimizer", "type", p.type);
  p.lr = optNumber(o, "optimizer", "lr", p.lr);
  p.momentum = optNumber(o, "optimizer", "momentum", p.momentum);
  p.weightDecay = optNumber(o, "optimizer", "weightDecay", p.weightDecay);
  p.nesterov = optBool(o, "optimizer", "nesterov", p.nesterov);
  p.beta1 = optNumber(o, "optimizer", "beta1", p.beta1);
  p.beta2 = optNumber(o, "optimizer", "beta2", p.beta2);
  p.eps = optNumber(o, "optimizer", "eps", p.eps);
  p.clipGradNorm = optNumber(o, "optimizer", "clipGradNorm", p.clipGradNorm);
  p.backboneLrMultiplier = optNumber(o, "optimizer", "backboneLrMultiplier", p.backboneLrMultiplier);
  p.implementation = optString(o, "optimizer", "implementation", p.implementation);
  return p;
}

TrainingOptions trainingOptionsFrom(const Napi::Object& o) {
  TrainingOptions t;
  t.amp = optBool(o, "training", "amp", t.amp);
  t.channelsLast = optBool(o, "training", "channelsLast", t.channelsLast);
  t.emaDecay = optNumber(o, "training", "emaDecay", t.emaDecay);
  t.emaTau = optNumber(o, "training", "emaTau", t.emaTau);
  t.replicas = static_cast<int64_t>(optNumber(o, "training", "replicas", static_cast<double>(t.replicas)));
  t.cudaGraph = optString(o, "training", "cudaGraph", t.cudaGraph);  // "off" | "on" | "auto"
  return t;
}

Napi::Value TrainerCreate(const Napi::CallbackInfo& info) {
  auto model = modelArg(info, 0);
  const auto optimizer = optimizerOptionsFrom(optionsArg(info, 1, "optimizer"));
  const auto lossObject = optionsArg(info, 2, "loss");
  const bool nanodet = model->architecture() == "nanodet-plus";
  const auto loss = nanodet ? RetinaLossOptions{} : retinaLossOptionsFrom(lossObject);
  const auto nanodetLoss = nanodet ? nanodetLossOptionsFrom(lossObject) : NanoDetLossOptions{};
  auto training = trainingOptionsFrom(optionsArg(info, 3, "training"));
  // argument 4: the process group of data-parallel training (null or absent: one process)
  if (info.Length() > 4 && !info[4].IsNull() && !info[4].IsUndefined()) training.group = groupArg(info, 4);
  training.bucketBytes = static_cast<int64_t>(optNumber(optionsArg(info, 3, "training"), "training", "bucketMiB", 25.0) * (1 << 20));
  if (training.bucketBytes < 1024) throw Napi::RangeError::New(info.Env(), "Expected at least 1/1024 MiB for training.bucketMiB");
  std::lock_guard<std::mutex> lock(model->mutex());
  return wrapObject(info.Env(), std::make_shared<TrainingSession>(model, optimizer, loss, training, nanodetLoss), &kSessionTag);
}

/// The step's promise: the step runs on libuv's pool when its ticket's turn comes.
Napi::Value stepPromise(Napi::Env env, const std::shared_ptr<TrainingSession>& session, const torch::Tensor& images, const torch::Tensor& annotations,
                        double lr, const torch::Tensor& views, int64_t epoch, uint64_t ticket) {
  return PromiseWorker<StepResult>::start(
      env, [session, images, annotations, lr, views, epoch, ticket] { return session->step(images, annotations, lr, views, epoch, ticket); },
      [](Napi::Env env, StepResult& r) -> Napi::Value {
        Napi::Object o = Napi::Object::New(env);
        o.Set("cls", r.cls);
        o.Set("reg", r.reg);
        o.Set("contrastive", r.contrastive);
        o.Set("total", r.total);
        o.Set("gradNorm", r.gradNorm);
        o.Set("skipped", r.skipped);
        o.Set("reason", r.reason);
        o.Set("graph", r.graph);
        if (!r.graphWarning.empty()) o.Set("graphWarning", r.graphWarning);
        o.Set("updateQueued", r.updateQueued);
        Napi::Object parts = Napi::Object::New(env);
        for (const auto& [name, value] : r.components) parts.Set(name, value);
        o.Set("components", parts);
        return o;
      });
}

Napi::Value TrainerStepAsync(const Napi::CallbackInfo& info) {
  auto session = sessionArg(info);
  auto images = tensorArg(info, 1, "images");
  auto annotations = tensorArg(info, 2, "annotations");
  const double lr = numberArg(info, 3, "lr", 1e-12, 1e6);
  torch::Tensor views;
  if (info.Length() > 4 && !info[4].IsNull() && !info[4].IsUndefined()) views = tensorArg(info, 4, "views");
  const int64_t epoch = info.Length() > 5 && !info[5].IsUndefined() ? intArg(info, 5, "epoch", 0, 1LL << 40) : 0;
  // the step's place in the order is taken here, on the JavaScript thread: a step asked for before the
  // last one has finished runs after it, whichever libuv thread picks it up first
  const uint64_t ticket = session->turns().take();
  try {
    return stepPromise(info.Env(), session, images, annotations, lr, views, epoch, ticket);
  } catch (...) {
    session->turns().abandon(ticket);
    throw;
  }
}

std::string statePathArg(const Napi::CallbackInfo& info) {
  const auto path = stringArg(info, 1, "path");
  if (path.size() < 4 || path.compare(path.size() - 3, 3, ".pt") != 0)
    throw Napi::RangeError::New(info.Env(), "Expected a path ending in .pt for path but received '" + path + "'");
  return path;
}

Napi::Value TrainerSaveStateAsync(const Napi::CallbackInfo& info) {
  auto session = sessionArg(info);
  const auto path = statePathArg(info);
  return PromiseWorker<bool>::start(
      info.Env(), [session, path] { session->saveState(path); return true; },
      [](Napi::Env env, bool&) -> Napi::Value { return env.Undefined(); });
}

Napi::Value TrainerLoadStateAsync(const Napi::CallbackInfo& info) {
  auto session = sessionArg(info);
  const auto path = statePathArg(info);
  return PromiseWorker<bool>::start(
      info.Env(), [session, path] { session->loadState(path); return true; },
      [](Napi::Env env, bool&) -> Napi::Value { return env.Undefined(); });
}

// Swaps the model's weights with the EMA weights (synchronous: a copy of the weights).
Napi::Value TrainerSwapEma(const Napi::CallbackInfo& info) {
  auto session = sessionArg(info);
  session->swapEma();
  return Napi::Boolean::New(info.Env(), session->hasEma());
}

Napi::Value TrainerDispose(const Napi::CallbackInfo& info) {
  auto* box = objectBoxArg<TrainingSession>(info, 0, "session", &kSessionTag, "TrainingSession");
  box->object.reset();
  return info.Env().Undefined();
}

}  // namespace

void registerTrainExports(Napi::Env env, Napi::Object exports) {
  exportFunction<TrainerCreate>(env, exports, "trainerCreate");
  exportFunction<TrainerStepAsync>(env, exports, "trainerStepAsync");
  exportFunction<TrainerSaveStateAsync>(env, exports, "trainerSaveStateAsync");
  exportFunction<TrainerLoadStateAsync>(env, exports, "trainerLoadStateAsync");
  exportFunction<TrainerSwapEma>(env, exports, "trainerSwapEma");
  exportFunction<TrainerDispose>(env, exports, "trainerDispose");
}

}  // namespace onestage::binding
