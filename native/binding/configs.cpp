#include "binding/configs.h"

#include "binding/napi_util.h"

namespace onestage::binding {

AnchorConfig anchorConfigFrom(const Napi::Object& o, const char* prefix) {
  AnchorConfig c;
  const std::string p(prefix);
  std::vector<double> levels = optNumbers(o, prefix, "levels", {});
  if (!levels.empty()) {
    c.levels.clear();
    for (double l : levels) {
      if (l != std::floor(l) || l < 0 || l > 12)
        throw Napi::RangeError::New(o.Env(), "Expected integers between 0 and 12 for " + p + ".levels");
      c.levels.push_back(static_cast<int64_t>(l));
    }
  }
  c.strides = optNumbers(o, prefix, "strides", {});
  c.sizes = optNumbers(o, prefix, "sizes", {});
  c.ratios = optNumbers(o, prefix, "ratios", c.ratios);
  c.scales = optNumbers(o, prefix, "scales", c.scales);
  c.style = optString(o, prefix, "style", c.style);
  return c.resolved();
}

BoxCoder boxCoderFrom(const Napi::Object& o, const char* prefix) {
  BoxCoder c;
  const auto stdv = optNumbers(o, prefix, "std", {c.std.begin(), c.std.end()});
  const auto mean = optNumbers(o, prefix, "mean", {c.mean.begin(), c.mean.end()});
  if (stdv.size() != 4 || mean.size() != 4)
    throw Napi::RangeError::New(o.Env(), std::string("Expected 4 numbers for ") + prefix + ".std and " + prefix + ".mean");
  for (int i = 0; i < 4; ++i) {
    if (!(stdv[i] > 0)) throw Napi::RangeError::New(o.Env(), std::string(prefix) + ".std values must be positive");
    c.std[i] = stdv[i];
    c.mean[i] = mean[i];
  }
  c.minTargetSize = optNumber(o, prefix, "minTargetSize", c.minTargetSize);
  c.maxDeltaExp = optNumber(o, prefix, "maxDeltaExp", c.maxDeltaExp);
  return c;
}

RetinaNetConfig retinaNetConfigFrom(const Napi::Object& o) {
  RetinaNetConfig c;
  c.depth = optInt(o, "options", "depth", 18, 152, c.depth);
  if (o.Get("numClasses").IsUndefined())
    throw Napi::TypeError::New(o.Env(), "Expected an integer between 1 and 100000 for options.numClasses but received undefined");
  c.numClasses = optInt(o, "options", "numClasses", 1, 100000, c.numClasses);
  c.featureSize = optInt(o, "options", "featureSize", 1, 4096, c.featureSize);
  c.prior = optNumber(o, "options", "prior", c.prior);
  c.freezeBn = optBool(o, "options", "freezeBn", c.freezeBn);
  c.freezeBnAffine = optBool(o, "options", "freezeBnAffine", c.freezeBnAffine);
  c.anchors = anchorConfigFrom(optObject(o, "options", "anchors"), "options.anchors");
  c.coder = boxCoderFrom(optObject(o, "options", "boxCoder"), "options.boxCoder");
  c.variant = optString(o, "options", "variant", c.variant);
  c.trainableBackboneLayers = optInt(o, "options", "trainableBackboneLayers", 0, 5, c.trainableBackboneLayers);
  return c;
}

DetectOptions detectOptionsFrom(const Napi::Object& o, DetectOptions d) {
  d.scoreThreshold = optNumber(o, "options", "scoreThreshold", d.scoreThreshold);
  d.nmsThreshold = optNumber(o, "options", "nmsThreshold", d.nmsThreshold);
  d.topkCandidates = optInt(o, "options", "topkCandidates", 0, 1LL << 40, d.topkCandidates);
  d.maxDetections = optInt(o, "options", "maxDetections", 0, 1LL << 40, d.maxDetections);
  d.amp = optBool(o, "options", "amp", d.amp);
  d.cudaGraph = optBool(o, "options", "cudaGraph", d.cudaGraph);
  return d;
}

NanoDetPlusConfig nanodetPlusConfigFrom(const Napi::Object& o) {
  NanoDetPlusConfig c;
  c.depth = optInt(o, "options", "depth", 18, 152, c.depth);
  if (o.Get("numClasses").IsUndefined())
    throw Napi::TypeError::New(o.Env(), "Expected an integer between 1 and 100000 for options.numClasses but received undefined");
  c.numClasses = optInt(o, "options", "numClasses", 1, 100000, c.numClasses);
  c.fpnChannels = optInt(o, "options", "featureSize", 1, 4096, c.fpnChannels);
  c.backbone = optString(o, "options", "backboneKind", c.backbone);
  c.backboneWidth = optString(o, "options", "backboneWidth", c.backboneWidth);
  c.neck = optString(o, "options", "neck", c.neck);
  c.neckKernelSize = optInt(o, "options", "neckKernelSize", 1, 15, c.neckKernelSize);
  std::vector<double> strides = optNumbers(o, "options", "strides", {});
  if (!strides.empty()) {
    c.strides.clear();
    for (double s : strides) {
      if (s != std::floor(s) || s < 1 || s > 4096) throw Napi::RangeError::New(o.Env(), "Expected integers for options.strides");
      c.strides.push_back(static_cast<int64_t>(s));
    }
  }
  const auto h = optObject(o, "options", "head");
  c.headChannels = optInt(h, "options.head", "channels", 1, 4096, c.headChannels);
  c.stackedConvs = optInt(h, "options.head", "stackedConvs", 0, 16, c.stackedConvs);
  c.kernelSize = optInt(h, "options.head", "kernelSize", 1, 15, c.kernelSize);
  c.convType = optString(h, "options.head", "convType", c.convType);
  c.regMax = optInt(o, "options", "regMax", 1, 64, c.regMax);
  const auto a = o.Get("aux");
  if (a.IsBoolean()) {
    c.aux = a.As<Napi::Boolean>().Value();
  } else if (!a.IsUndefined()) {
    const auto ao = optObject(o, "options", "aux");
    c.aux = true;
    c.auxChannels = optInt(ao, "options.aux", "channels", 1, 4096, c.auxChannels);
    c.auxStackedConvs = optInt(ao, "options.aux", "stackedConvs", 0, 16, c.auxStackedConvs);
    c.auxGroups = optInt(ao, "options.aux", "groups", 1, 4096, c.auxGroups);
  }
  c.freezeBn = optBool(o, "options", "freezeBn", c.freezeBn);
  try {
    c.check();
  } catch (const std::exception& e) {
    throw Napi::RangeError::New(o.Env(), std::string("options: ") + e.what());
  }
  return c;
}

DslAssignerOptions dslAssignerOptionsFrom(const Napi::Object& o, const char* prefix) {
  DslAssignerOptions a;
  a.topk = optInt(o, prefix, "topk", 1, 1000, a.topk);
  a.iouFactor = optNumber(o, prefix, "iouFactor", a.iouFactor);
  a.softCenterPrior = optBool(o, prefix, "softCenterPrior", a.softCenterPrior);
  a.softCenterRadius = optNumber(o, prefix, "softCenterRadius", a.softCenterRadius);
  a.ignoreIof = optNumber(o, prefix, "ignoreIof", a.ignoreIof);
  a.maxPairs = optInt(o, prefix, "maxPairs", 1, int64_t{1} << 40, a.maxPairs);
  return a;
}

MaxIoUAssignerOptions assignerOptionsFrom(const Napi::Object& o, const char* prefix) {
  MaxIoUAssignerOptions a;
  a.positiveIou = optNumber(o, prefix, "positiveIou", a.positiveIou);
  a.negativeIou = optNumber(o, prefix, "negativeIou", a.negativeIou);
  if (a.negativeIou > a.positiveIou)
    throw Napi::RangeError::New(o.Env(), std::string(prefix) + ".negativeIou must not exceed " + prefix + ".positiveIou");
  a.lowQualityMatches = optBool(o, prefix, "lowQualityMatches", a.lowQualityMatches);
  a.minPositiveIou = optNumber(o, prefix, "minPositiveIou", a.minPositiveIou);
  a.ignoreIof = optNumber(o, prefix, "ignoreIof", a.ignoreIof);
  return a;
}

namespace {
std::string oneOf(const Napi::Object& o, const char* prefix, const char* key, std::initializer_list<const char*> choices) {
  const auto v = optString(o, prefix, key, *choices.begin());
  std::string all;
  for (const char* c : choices) {
    if (v == c) return v;
    all += (all.empty() ? "" : ", ") + std::string(c);
  }
  throw Napi::RangeError::New(o.Env(), "Expected one of " + all + " for " + prefix + "." + key + " but received '" + v + "'");
}
}  // namespace

FocalLossOptions focalOptionsFrom(const Napi::Object& o, const char* prefix) {
  FocalLossOptions f;
  f.variant = oneOf(o, prefix, "variant", {"retinanet", "logits"});
  f.alpha = optNumber(o, prefix, "alpha", f.alpha);
  f.gamma = optNumber(o, prefix, "gamma", f.gamma);
  if (f.gamma < 0) throw Napi::RangeError::New(o.Env(), std::string(prefix) + ".gamma must not be negative");
  f.probabilities = optBool(o, prefix, "probabilities", f.probabilities);
  f.normalize = oneOf(o, prefix, "normalize", {"image", "batch"});
  f.regression = oneOf(o, prefix, "regression", {"smoothL1", "l1", "giou", "none"});
  f.beta = optNumber(o, prefix, "beta", f.beta);
  const std::string p(prefix);
  f.coder = boxCoderFrom(optObject(o, prefix, "boxCoder"), (p + ".boxCoder").c_str());
  f.assigner = assignerOptionsFrom(optObject(o, prefix, "assigner"), (p + ".assigner").c_str());
  return f;
}

GhmOptions ghmOptionsFrom(const Napi::Object& o, const char* prefix, GhmOptions d) {
  d.bins = optInt(o, prefix, "bins", 1, 100000, d.bins);
  d.momentum = optNumber(o, prefix, "momentum", d.momentum);
  if (d.momentum < 0 || d.momentum >= 1) throw Napi::RangeError::New(o.Env(), std::string(prefix) + ".momentum must be in [0, 1)");
  d.lossWeight = optNumber(o, prefix, "lossWeight", d.lossWeight);
  d.mu = optNumber(o, prefix, "mu", d.mu);
  if (!(d.mu > 0)) throw Napi::RangeError::New(o.Env(), std::string(prefix) + ".mu must be positive");
  return d;
}

NanoDetLossOptions nanodetLossOptionsFrom(const Napi::Object& o) {
  NanoDetLossOptions n;
  n.qflBeta = optNumber(o, "options", "qflBeta", n.qflBeta);
  n.qflWeight = optNumber(o, "options", "qflWeight", n.qflWeight);
  n.bboxWeight = optNumber(o, "options", "giouWeight", n.bboxWeight);
  n.dflWeight = optNumber(o, "options", "dflWeight", n.dflWeight);
  n.detachEpoch = optInt(o, "options", "detachEpoch", 0, 1000000, n.detachEpoch);
  if (o.Has("assignBy")) n.assignBy = oneOf(o, "options", "assignBy", {"aux", "aux-until-detach"});
  n.assigner = dslAssignerOptionsFrom(optObject(o, "options", "assigner"), "options.assigner");
  return n;
}

RetinaLossOptions retinaLossOptionsFrom(const Napi::Object& o) {
  RetinaLossOptions r;
  r.classification = oneOf(o, "options", "classification", {"focal", "ghmc"});
  r.regression = oneOf(o, "options", "regression", {"smoothL1", "l1", "giou", "ghmr", "none"});
  r.clsWeight = optNumber(o, "options", "clsWeight", r.clsWeight);
  r.regWeight = optNumber(o, "options", "regWeight", r.regWeight);
  r.focal = focalOptionsFrom(optObject(o, "options", "focal"), "options.focal");
  r.ghmc = ghmOptionsFrom(optObject(o, "options", "ghmc"), "options.ghmc", r.ghmc);
  r.ghmr = ghmOptionsFrom(optObject(o, "options", "ghmr"), "options.ghmr", r.ghmr);
  r.ghmPerLevel = optBool(o, "options", "ghmPerLevel", r.ghmPerLevel);
  r.ghmAcrossRanks = optBool(o, "options", "ghmAcrossRanks", r.ghmAcrossRanks);
  const auto c = optObject(o, "options", "contrastive");
  auto& ct = r.contrastive;
  ct.weight = optNumber(c, "options.contrastive", "weight", ct.weight);
  ct.loss.temperature = optNumber(c, "options.contrastive", "temperature", ct.loss.temperature);
  if (c.Has("levels")) ct.loss.levels = oneOf(c, "options.contrastive", "levels", {"all", "assigned"});
  if (c.Has("negatives")) ct.loss.negatives = oneOf(c, "options.contrastive", "negatives", {"other-class", "all-other", "same-region-other-images"});
  if (c.Has("pooling")) ct.loss.pooling = oneOf(c, "options.contrastive", "pooling", {"average", "flatten"});
  ct.loss.outputSize = static_cast<int64_t>(optNumber(c, "options.contrastive", "outputSize", static_cast<double>(ct.loss.outputSize)));
  ct.loss.samplingRatio = static_cast<int64_t>(optNumber(c, "options.contrastive", "samplingRatio", static_cast<double>(ct.loss.samplingRatio)));
  ct.loss.backgroundGrid = static_cast<int64_t>(optNumber(c, "options.contrastive", "backgroundGrid", static_cast<double>(ct.loss.backgroundGrid)));
  const auto p = optObject(c, "options.contrastive", "projection");
  ct.projectionHidden = static_cast<int64_t>(optNumber(p, "options.contrastive.projection", "hidden", 0));
  ct.projectionOut = static_cast<int64_t>(optNumber(p, "options.contrastive.projection", "out", static_cast<double>(ct.projectionOut)));
  ct.detectOnViews = optBool(c, "options.contrastive", "detectOnViews", ct.detectOnViews);
  if (!(ct.weight >= 0) || !(ct.loss.temperature > 0) || ct.loss.outputSize < 1 || ct.loss.outputSize > 64 || ct.loss.samplingRatio < 1 ||
      ct.loss.samplingRatio > 16 || ct.loss.backgroundGrid < 1 || ct.loss.backgroundGrid > 64 || ct.projectionHidden < 0 || ct.projectionHidden > 65536 ||
      ct.projectionOut < 1 || ct.projectionOut > 65536)
    throw Napi::RangeError::New(o.Env(), "options.contrastive: weight ≥ 0, temperature > 0, outputSize 1…64, samplingRatio 1…16, backgroundGrid 1…64, projection sizes 0…65536 expected");
  return r;
}

}  // namespace onestage::binding
