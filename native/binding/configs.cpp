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
  return c;
}

DetectOptions detectOptionsFrom(const Napi::Object& o) {
  DetectOptions d;
  d.scoreThreshold = optNumber(o, "options", "scoreThreshold", d.scoreThreshold);
  d.nmsThreshold = optNumber(o, "options", "nmsThreshold", d.nmsThreshold);
  d.topkCandidates = optInt(o, "options", "topkCandidates", 0, 1LL << 40, d.topkCandidates);
  d.maxDetections = optInt(o, "options", "maxDetections", 0, 1LL << 40, d.maxDetections);
  return d;
}

}  // namespace onestage::binding
