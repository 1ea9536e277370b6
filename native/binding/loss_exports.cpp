// Loss and assignment exports: max-IoU assignment, Focal loss, GHM-C/GHM-R (stateful), and the
// RetinaNet loss composer (stateful). Forward passes run on the thread pool.
#include <napi.h>

#include "binding/configs.h"
#include "binding/napi_util.h"
#include "core/errors.h"
#include "core/losses/contrastive.h"
#include "core/losses/gfocal.h"
#include "core/losses/iou_loss.h"
#include "core/losses/nanodet_loss.h"
#include "core/tensor_types.h"

namespace onestage::binding {

namespace {

constexpr napi_type_tag kGhmTag = {0x6f6e657374616765ULL, 0x47686d0000000001ULL};
constexpr napi_type_tag kRetinaLossTag = {0x6f6e657374616765ULL, 0x5265744c6f737301ULL};

struct GhmObject {
  bool regression;  // GHM-R, else GHM-C
  GhmOptions options;
  GhmState state;
  std::mutex mutex;
};

using Named = std::vector<std::pair<std::string, torch::Tensor>>;

Napi::Value namedToJs(Napi::Env env, Named& named) {
  Napi::Object out = Napi::Object::New(env);
  for (auto& [k, t] : named) out.Set(k, wrapTensor(env, t));
  return out;
}

Napi::Value AssignMaxIouAsync(const Napi::CallbackInfo& info) {
  auto anchors = tensorArg(info, 0, "anchors");
  auto annotations = tensorArg(info, 1, "annotations");
  const auto opts = assignerOptionsFrom(optionsArg(info, 2, "options"), "options");
  checkAnchorsAndAnnotations(anchors, annotations);
  return PromiseWorker<Named>::start(
      info.Env(),
      [anchors, annotations, opts] {
        const c10::DeviceGuard guard(annotations.device());
        const auto a = assignMaxIou(anchors, annotations, opts);
        return Named{{"labels", a.labels}, {"assignedGt", a.assignedGt}, {"boxes", a.boxes}, {"maxIou", a.maxIou},
                     {"numPositives", a.numPositives}};
      },
      namedToJs);
}

Napi::Value FocalLossAsync(const Napi::CallbackInfo& info) {
  auto cls = tensorArg(info, 0, "classifications");
  auto reg = tensorArg(info, 1, "regressions");
  auto anchors = tensorArg(info, 2, "anchors");
  auto annotations = tensorArg(info, 3, "annotations");
  const auto opts = focalOptionsFrom(optionsArg(info, 4, "options"), "options");
  checkDetectionLossInputs(cls, reg, anchors, annotations);
  return PromiseWorker<Named>::start(
      info.Env(),
      [cls, reg, anchors, annotations, opts] {
        const c10::DeviceGuard guard(cls.device());
        const auto l = focalLoss(cls, reg, anchors, annotations, opts);
        return Named{{"cls", l.cls}, {"reg", l.reg}};
      },
      namedToJs);
}

Napi::Value ContrastiveLossAsync(const Napi::CallbackInfo& info) {
  const auto f1 = tensorListArg(info, 0, "features1", 1, 16);
  const auto f2 = tensorListArg(info, 1, "features2", 1, 16);
  auto annotations = tensorArg(info, 2, "annotations");
  const int64_t height = intArg(info, 3, "inputHeight", 1, 1 << 20);
  const int64_t width = intArg(info, 4, "inputWidth", 1, 1 << 20);
  const auto o = optionsArg(info, 5, "options");
  ContrastiveLossOptions opts;
  opts.temperature = optNumber(o, "options", "temperature", opts.temperature);
  opts.levels = optString(o, "options", "levels", opts.levels);
  opts.negatives = optString(o, "options", "negatives", opts.negatives);
  opts.pooling = optString(o, "options", "pooling", opts.pooling);
  opts.outputSize = static_cast<int64_t>(optNumber(o, "options", "outputSize", static_cast<double>(opts.outputSize)));
  opts.samplingRatio = static_cast<int64_t>(optNumber(o, "options", "samplingRatio", static_cast<double>(opts.samplingRatio)));
  opts.firstLevel = static_cast<int64_t>(optNumber(o, "options", "firstLevel", static_cast<double>(opts.firstLevel)));
  opts.backgroundGrid = static_cast<int64_t>(optNumber(o, "options", "backgroundGrid", static_cast<double>(opts.backgroundGrid)));
  if (opts.outputSize < 1 || opts.outputSize > 64 || opts.samplingRatio < 1 || opts.samplingRatio > 16 || opts.backgroundGrid < 1 || opts.backgroundGrid > 64)
    throw onestage::RangeError("contrastiveLoss: outputSize 1…64, samplingRatio 1…16 and backgroundGrid 1…64 expected");
  for (const auto& t : f1)
    if (!t.is_floating_point() || t.device() != f1[0].device()) throw onestage::RangeError("contrastiveLoss: features must be floating point on one device");
  for (const auto& t : f2)
    if (!t.is_floating_point() || t.device() != f1[0].device()) throw onestage::RangeError("contrastiveLoss: features must be floating point on one device");
  return PromiseWorker<std::pair<torch::Tensor, torch::Tensor>>::start(
      info.Env(),
      [f1, f2, annotations, height, width, opts] {
        const c10::DeviceGuard guard(f1[0].device());
        const auto r = contrastiveLoss(f1, f2, annotations, height, width, opts);
        // the counts stay on the device: JS reads them only when asked (a wait for the forward on CUDA)
        return std::make_pair(r.loss, torch::stack({r.embeddings, r.withBackground}));
      },
      [](Napi::Env env, std::pair<torch::Tensor, torch::Tensor>& r) -> Napi::Value {
        Napi::Object out = Napi::Object::New(env);
        out.Set("loss", wrapTensor(env, r.first));
        out.Set("counts", wrapTensor(env, r.second));
        return out;
      });
}

Napi::Value SigmoidFocalLossAsync(const Napi::CallbackInfo& info) {
  auto x = tensorArg(info, 0, "logits");
  auto t = tensorArg(info, 1, "targets");
  const auto o = optionsArg(info, 2, "options");
  const double alpha = optNumber(o, "options", "alpha", 0.25);
  const double gamma = optNumber(o, "options", "gamma", 2.0);
  if (!x.is_floating_point() || x.sizes() != t.sizes() || x.device() != t.device())
    throw onestage::RangeError("sigmoidFocalLoss: logits and targets must be float tensors of one shape on one device (received " +
                               describeShape(x.sizes()) + " and " + describeShape(t.sizes()) + ")");
  return tensorPromise(info.Env(), [x, t, alpha, gamma] {
    const c10::DeviceGuard guard(x.device());
    return sigmoidFocalLoss(x, t.to(x.scalar_type()), alpha, gamma);
  });
}

void checkSameDevice(const std::vector<const torch::Tensor*>& ts, const char* what) {
  for (const auto* t : ts)
    if (t->device() != ts.front()->device()) throw onestage::RangeError(std::string(what) + ": the tensors must be on one device");
}

Napi::Value QualityFocalLossAsync(const Napi::CallbackInfo& info) {
  auto pred = tensorArg(info, 0, "pred");
  auto label = tensorArg(info, 1, "label");
  auto score = tensorArg(info, 2, "score");
  const double beta = optNumber(optionsArg(info, 3, "options"), "options", "beta", 2.0);
  if (!pred.is_floating_point() || !score.is_floating_point()) throw onestage::TypeError("qualityFocalLoss: pred and score must be floating point");
  checkSameDevice({&pred, &label, &score}, "qualityFocalLoss");
  return tensorPromise(info.Env(), [pred, label, score, beta] {
    const c10::DeviceGuard guard(pred.device());
    return qualityFocalLoss(pred, label, score, beta);
  });
}

Napi::Value DistributionFocalLossAsync(const Napi::CallbackInfo& info) {
  auto pred = tensorArg(info, 0, "pred");
  auto label = tensorArg(info, 1, "label");
  if (!pred.is_floating_point() || !label.is_floating_point()) throw onestage::TypeError("distributionFocalLoss: pred and label must be floating point");
  checkSameDevice({&pred, &label}, "distributionFocalLoss");
  return tensorPromise(info.Env(), [pred, label] {
    const c10::DeviceGuard guard(pred.device());
    return distributionFocalLoss(pred, label);
  });
}

Napi::Value GiouLossAsync(const Napi::CallbackInfo& info) {
  auto pred = tensorArg(info, 0, "pred");
  auto target = tensorArg(info, 1, "target");
  const double eps = optNumber(optionsArg(info, 2, "options"), "options", "eps", 1e-6);
  checkBoxes(pred, "pred");
  checkBoxes(target, "target");
  if (pred.sizes() != target.sizes()) throw onestage::RangeError("giouLoss: pred " + describeShape(pred.sizes()) + " and target " + describeShape(target.sizes()) + " must have one shape");
  checkSameDevice({&pred, &target}, "giouLoss");
  return tensorPromise(info.Env(), [pred, target, eps] {
    const c10::DeviceGuard guard(pred.device());
    return giouLoss(pred, target, eps);
  });
}

Napi::Value AssignDslAsync(const Napi::CallbackInfo& info) {
  auto logits = tensorArg(info, 0, "logits");
  auto priors = tensorArg(info, 1, "priors");
  auto decoded = tensorArg(info, 2, "decoded");
  auto annotations = tensorArg(info, 3, "annotations");
  const auto opts = dslAssignerOptionsFrom(optionsArg(info, 4, "options"), "options");
  return PromiseWorker<Named>::start(
      info.Env(),
      [logits, priors, decoded, annotations, opts] {
        const c10::DeviceGuard guard(logits.device());
        const auto a = assignDsl(logits, priors, decoded, annotations, opts);
        return Named{{"gtIndex", a.gtIndex}, {"labels", a.labels}, {"ious", a.ious}, {"ignored", a.ignored}, {"numPositives", a.numPositives}};
      },
      namedToJs);
}

Napi::Value NanodetLossAsync(const Napi::CallbackInfo& info) {
  auto preds = tensorArg(info, 0, "preds");
  torch::Tensor aux;
  if (!info[1].IsNull() && !info[1].IsUndefined()) aux = tensorArg(info, 1, "auxPreds");
  auto priors = tensorArg(info, 2, "priors");
  auto annotations = tensorArg(info, 3, "annotations");
  const auto o = optionsArg(info, 4, "options");
  const auto opts = nanodetLossOptionsFrom(o);
  const int64_t numClasses = optInt(o, "options", "numClasses", 1, 100000, 1);
  const int64_t regMax = optInt(o, "options", "regMax", 1, 64, 7);
  const bool assignWithMain = optBool(o, "options", "assignWithMain", false);
  std::vector<const torch::Tensor*> all{&preds, &priors, &annotations};
  if (aux.defined()) all.push_back(&aux);
  checkSameDevice(all, "nanodetPlusLoss");
  return PromiseWorker<Named>::start(
      info.Env(),
      [preds, aux, priors, annotations, opts, numClasses, regMax, assignWithMain] {
        const c10::DeviceGuard guard(preds.device());
        const auto p = nanodetPlusLoss(preds, aux, priors, annotations, numClasses, regMax, opts, assignWithMain);
        Named out{{"qfl", p.main.qfl}, {"bbox", p.main.bbox}, {"dfl", p.main.dfl}, {"numPositives", p.numPositives}, {"total", p.total()}};
        if (p.aux.qfl.defined()) {
          out.emplace_back("auxQfl", p.aux.qfl);
          out.emplace_back("auxBbox", p.aux.bbox);
          out.emplace_back("auxDfl", p.aux.dfl);
        }
        return out;
      },
      namedToJs);
}

std::shared_ptr<GhmObject> ghmArg(const Napi::CallbackInfo& info) {
  return objectArg<GhmObject>(info, 0, "loss", &kGhmTag, "GHM loss");
}

Napi::Value GhmCreate(const Napi::CallbackInfo& info) {
  const auto kind = stringArg(info, 0, "kind");
  if (kind != "ghmc" && kind != "ghmr")
    throw Napi::RangeError::New(info.Env(), "Expected 'ghmc' or 'ghmr' for kind but received '" + kind + "'");
  auto o = std::make_shared<GhmObject>();
  o->regression = kind == "ghmr";
  o->options = ghmOptionsFrom(optionsArg(info, 1, "options"), "options", GhmOptions{});
  return wrapObject(info.Env(), o, &kGhmTag);
}

Napi::Value GhmForwardAsync(const Napi::CallbackInfo& info) {
  auto g = ghmArg(info);
  auto pred = tensorArg(info, 1, "pred");
  auto target = tensorArg(info, 2, "target");
  auto weight = tensorArg(info, 3, "labelWeight");
  return tensorPromise(info.Env(), [g, pred, target, weight] {
    const c10::DeviceGuard guard(pred.device());
    std::lock_guard<std::mutex> lock(g->mutex);
    if (g->regression) return ghmrLoss(pred, target, weight, g->options, g->state);
    // mmdetection's labels form: target = class index per row (one dimension fewer than pred)
    if (target.dim() == pred.dim() - 1) return ghmcLossLabels(pred, target, weight, g->options, g->state);
    return ghmcLoss(pred, target, weight, g->options, g->state);
  });
}

Napi::Value GhmAccSum(const Napi::CallbackInfo& info) {
  auto g = ghmArg(info);
  std::lock_guard<std::mutex> lock(g->mutex);
  if (!g->state.accSum.defined()) return info.Env().Null();
  return wrapTensor(info.Env(), g->state.accSum.detach().clone());
}

Napi::Value GhmSetAccSum(const Napi::CallbackInfo& info) {
  auto g = ghmArg(info);
  auto acc = tensorArg(info, 1, "accSum");
  if (acc.dim() != 1 || acc.size(0) != g->options.bins || !acc.is_floating_point())
    throw Napi::RangeError::New(info.Env(), "Expected a float tensor of shape [" + std::to_string(g->options.bins) +
                                                "] for accSum but received " + describeShape(acc.sizes()));
  std::lock_guard<std::mutex> lock(g->mutex);
  g->state.accSum = acc.detach().to(torch::kFloat64).clone();
  return info.Env().Undefined();
}

Napi::Value GhmDispose(const Napi::CallbackInfo& info) {
  auto* box = objectBoxArg<GhmObject>(info, 0, "loss", &kGhmTag, "GHM loss");
  box->object.reset();
  return info.Env().Undefined();
}

std::shared_ptr<RetinaLoss> retinaLossArg(const Napi::CallbackInfo& info) {
  return objectArg<RetinaLoss>(info, 0, "loss", &kRetinaLossTag, "RetinaNetLoss");
}

Napi::Value RetinaLossCreate(const Napi::CallbackInfo& info) {
  return wrapObject(info.Env(), std::make_shared<RetinaLoss>(retinaLossOptionsFrom(optionsArg(info, 0, "options"))),
                    &kRetinaLossTag);
}

Napi::Value RetinaLossForwardAsync(const Napi::CallbackInfo& info) {
  auto loss = retinaLossArg(info);
  auto cls = tensorArg(info, 1, "classifications");
  auto reg = tensorArg(info, 2, "regressions");
  auto anchors = tensorArg(info, 3, "anchors");
  auto annotations = tensorArg(info, 4, "annotations");
  const auto levels = intArrayArg(info, 5, "levelSizes", 0, int64_t{1} << 40);
  checkDetectionLossInputs(cls, reg, anchors, annotations);
  return PromiseWorker<Named>::start(
      info.Env(),
      [loss, cls, reg, anchors, annotations, levels] {
        const c10::DeviceGuard guard(cls.device());
        std::lock_guard<std::mutex> lock(loss->mutex());
        const auto l = loss->forward(cls, reg, anchors, annotations, levels);
        return Named{{"cls", l.cls}, {"reg", l.reg}};
      },
      namedToJs);
}

Napi::Value RetinaLossState(const Napi::CallbackInfo& info) {
  auto loss = retinaLossArg(info);
  std::lock_guard<std::mutex> lock(loss->mutex());
  Napi::Env env = info.Env();
  auto list = [&](std::vector<GhmState>& states) {
    Napi::Array a = Napi::Array::New(env, states.size());
    for (size_t i = 0; i < states.size(); ++i)
      a.Set(static_cast<uint32_t>(i), states[i].accSum.defined() ? Napi::Value(wrapTensor(env, states[i].accSum.detach().clone()))
                                                                 : env.Null());
    return a;
  };
  Napi::Object out = Napi::Object::New(env);
  out.Set("ghmc", list(loss->ghmcStates()));
  out.Set("ghmr", list(loss->ghmrStates()));
  return out;
}

Napi::Value RetinaLossDispose(const Napi::CallbackInfo& info) {
  auto* box = objectBoxArg<RetinaLoss>(info, 0, "loss", &kRetinaLossTag, "RetinaNetLoss");
  box->object.reset();
  return info.Env().Undefined();
}

}  // namespace

void registerLossExports(Napi::Env env, Napi::Object exports) {
  exportFunction<AssignMaxIouAsync>(env, exports, "assignMaxIouAsync");
  exportFunction<FocalLossAsync>(env, exports, "focalLossAsync");
  exportFunction<SigmoidFocalLossAsync>(env, exports, "sigmoidFocalLossAsync");
  exportFunction<ContrastiveLossAsync>(env, exports, "contrastiveLossAsync");
  exportFunction<QualityFocalLossAsync>(env, exports, "qualityFocalLossAsync");
  exportFunction<DistributionFocalLossAsync>(env, exports, "distributionFocalLossAsync");
  exportFunction<GiouLossAsync>(env, exports, "giouLossAsync");
  exportFunction<AssignDslAsync>(env, exports, "assignDslAsync");
  exportFunction<NanodetLossAsync>(env, exports, "nanodetLossAsync");
  exportFunction<GhmCreate>(env, exports, "ghmCreate");
  exportFunction<GhmForwardAsync>(env, exports, "ghmForwardAsync");
  exportFunction<GhmAccSum>(env, exports, "ghmAccSum");
  exportFunction<GhmSetAccSum>(env, exports, "ghmSetAccSum");
  exportFunction<GhmDispose>(env, exports, "ghmDispose");
  exportFunction<RetinaLossCreate>(env, exports, "retinaLossCreate");
  exportFunction<RetinaLossForwardAsync>(env, exports, "retinaLossForwardAsync");
  exportFunction<RetinaLossState>(env, exports, "retinaLossState");
  exportFunction<RetinaLossDispose>(env, exports, "retinaLossDispose");
}

}  // namespace onestage::binding
