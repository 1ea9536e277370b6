// Geometry exports: anchors, box coder, IoU, clipping, NMS — usable on plain tensors from TS.
#include <napi.h>

#include "binding/configs.h"
#include "binding/napi_util.h"
#include "core/anchors.h"
#include "core/boxes.h"
#include "core/losses/gfocal.h"
#include "core/models/frozen_bn.h"
#include "core/models/max_pool.h"
#include "core/nms.h"
#include "core/priors.h"
#include "core/tensor_types.h"
#include "core/roi_align.h"

namespace onestage::binding {

namespace {

Napi::Value GenerateAnchors(const Napi::CallbackInfo& info) {
  const auto cfg = anchorConfigFrom(optionsArg(info, 0, "options"), "options");
  const int64_t h = intArg(info, 1, "height", 1, 1 << 20);
  const int64_t w = intArg(info, 2, "width", 1, 1 << 20);
  return wrapTensor(info.Env(), generateAnchors(cfg, h, w));
}

Napi::Value BoxEncode(const Napi::CallbackInfo& info) {
  const auto anchors = tensorArg(info, 0, "anchors");
  const auto boxes = tensorArg(info, 1, "boxes");
  checkBoxes(anchors, "anchors");
  checkBoxes(boxes, "boxes");
  return wrapTensor(info.Env(), boxCoderFrom(optionsArg(info, 2, "options"), "options").encode(anchors, boxes));
}

Napi::Value BoxDecode(const Napi::CallbackInfo& info) {
  const auto anchors = tensorArg(info, 0, "anchors");
  const auto deltas = tensorArg(info, 1, "deltas");
  checkBoxes(anchors, "anchors");
  checkBoxes(deltas, "deltas");
  return wrapTensor(info.Env(), boxCoderFrom(optionsArg(info, 2, "options"), "options").decode(anchors, deltas));
}

Napi::Value BoxIou(const Napi::CallbackInfo& info) {
  const auto a = tensorArg(info, 0, "a");
  const auto b = tensorArg(info, 1, "b");
  checkBoxes(a, "a");
  checkBoxes(b, "b");
  return wrapTensor(info.Env(), boxIou(a, b));
}

Napi::Value ClipBoxes(const Napi::CallbackInfo& info) {
  const auto boxes = tensorArg(info, 0, "boxes");
  checkBoxes(boxes, "boxes");
  return wrapTensor(info.Env(), clipBoxes(boxes, numberArg(info, 1, "height", 0, 1e9), numberArg(info, 2, "width", 0, 1e9)));
}

Napi::Value Nms(const Napi::CallbackInfo& info) {
  const auto boxes = tensorArg(info, 0, "boxes");
  const auto scores = tensorArg(info, 1, "scores");
  return wrapTensor(info.Env(), nms(boxes, scores, numberArg(info, 2, "iouThreshold", 0, 1)));
}

Napi::Value BatchedNms(const Napi::CallbackInfo& info) {
  const auto boxes = tensorArg(info, 0, "boxes");
  const auto scores = tensorArg(info, 1, "scores");
  const auto groups = tensorArg(info, 2, "groups");
  return wrapTensor(info.Env(), batchedNms(boxes, scores, groups, numberArg(info, 3, "iouThreshold", 0, 1)));
}

Napi::Value RoiAlign(const Napi::CallbackInfo& info) {
  const auto features = tensorArg(info, 0, "features");
  const auto rois = tensorArg(info, 1, "rois");
  const auto o = optionsArg(info, 2, "options");
  if (features.dim() != 4 || !features.is_floating_point())
    throw Napi::RangeError::New(info.Env(), "Expected floating-point features of shape [B, C, H, W]");
  if (rois.dim() != 2 || rois.size(1) != 5 || !rois.is_floating_point())
    throw Napi::RangeError::New(info.Env(), "Expected floating-point rois of shape [R, 5] (batch index, x1, y1, x2, y2)");
  if (features.device() != rois.device()) throw Napi::RangeError::New(info.Env(), "features and rois must be on the same device");
  RoiAlignOptions opts;
  opts.outputHeight = static_cast<int64_t>(optNumber(o, "options", "outputHeight", 7));
  opts.outputWidth = static_cast<int64_t>(optNumber(o, "options", "outputWidth", 7));
  opts.spatialScale = optNumber(o, "options", "spatialScale", 1.0);
  opts.samplingRatio = static_cast<int64_t>(optNumber(o, "options", "samplingRatio", 2));
  opts.aligned = optBool(o, "options", "aligned", true);
  if (opts.outputHeight < 1 || opts.outputWidth < 1 || opts.outputHeight > 1024 || opts.outputWidth > 1024 || opts.samplingRatio < 1 || opts.samplingRatio > 64 || !(opts.spatialScale > 0))
    throw Napi::RangeError::New(info.Env(), "Expected output sizes in 1…1024, samplingRatio in 1…64 and a positive spatialScale");
  return wrapTensor(info.Env(), roiAlign(features, rois, opts));
}

// the tests' view of the ResNet stem's max pooling: output and input gradient, by onestage's kernels (where
// they apply) or by LibTorch's max_pool2d
Napi::Value MaxPool2dWithGradient(const Napi::CallbackInfo& info) {
  auto x = tensorArg(info, 0, "input");
  const auto gy = tensorArg(info, 1, "gradOutput");
  if (x.dim() != 4 || !x.is_floating_point()) throw Napi::RangeError::New(info.Env(), "Expected a floating-point input of shape [N, C, H, W]");
  if (gy.device() != x.device()) throw Napi::RangeError::New(info.Env(), "input and gradOutput must be on the same device");
  const auto o = optionsArg(info, 2, "options");
  const int64_t k = static_cast<int64_t>(optNumber(o, "options", "kernel", 3));
  const int64_t s = static_cast<int64_t>(optNumber(o, "options", "stride", 2));
  const int64_t p = static_cast<int64_t>(optNumber(o, "options", "padding", 1));
  // the storage type pooled (JavaScript tensors are float32 or float64; the results come back in float32)
  const std::string type = optString(o, "options", "type", "float32");
  if (type != "float32" && type != "bfloat16" && type != "float16")
    throw Napi::RangeError::New(info.Env(), "Expected 'float32', 'bfloat16' or 'float16' for options.type but received '" + type + "'");
  const auto dtype = type == "bfloat16" ? at::kBFloat16 : type == "float16" ? at::kHalf : at::kFloat;
  x = x.to(dtype);
  if (optBool(o, "options", "channelsLast", false)) x = x.contiguous(at::MemoryFormat::ChannelsLast);
  auto r = maxPool2dWithGradient(x, gy.to(dtype), k, s, p, optBool(o, "options", "aten", false));
  auto out = Napi::Object::New(info.Env());
  out.Set("output", wrapTensor(info.Env(), r.output.to(at::kFloat).contiguous()));
  out.Set("gradInput", wrapTensor(info.Env(), r.gradInput.to(at::kFloat).contiguous()));
  out.Set("implementation", Napi::String::New(info.Env(), r.implementation));
  return out;
}

// the tests' view of the fused frozen-BatchNorm kernels (CUDA) or their ATen replicas (CPU): forward and backward on their own
Napi::Value FrozenBatchNormWithGradient(const Napi::CallbackInfo& info) {
  auto optional = [&](size_t i, const char* name) { return arg(info, i).IsNull() || arg(info, i).IsUndefined() ? torch::Tensor() : tensorArg(info, i, name); };
  auto x = tensorArg(info, 0, "input");
  auto r = optional(1, "residual");
  auto gy = tensorArg(info, 2, "gradOutput");
  auto gy2 = optional(3, "gradOutput2");
  const auto params = tensorArg(info, 4, "params");
  const auto o = optionsArg(info, 5, "options");
  // the storage type (JavaScript tensors are float32 or float64; the results come back in float32)
  const std::string type = optString(o, "options", "type", "float32");
  if (type != "float32" && type != "bfloat16" && type != "float16")
    throw Napi::RangeError::New(info.Env(), "Expected 'float32', 'bfloat16' or 'float16' for options.type but received '" + type + "'");
  const auto dtype = type == "bfloat16" ? at::kBFloat16 : type == "float16" ? at::kHalf : at::kFloat;
  const double eps = optNumber(o, "options", "eps", 1e-5);
  auto prepare = [&](torch::Tensor& t) {
    if (!t.defined()) return;
    if (t.device() != x.device()) throw Napi::RangeError::New(info.Env(), "Expected every tensor on the input's device");
    t = t.to(dtype);
    if (t.dim() == 4) t = t.contiguous(at::MemoryFormat::ChannelsLast);  // other shapes: the RangeError below
  };
  for (auto* t : {&r, &gy, &gy2}) prepare(*t);
  prepare(x);
  const auto c = frozenBatchNormWithGradient(x, r, gy, gy2, params.to(at::kFloat), eps, optBool(o, "options", "relu", true), optBool(o, "options", "maskFromOutput", false),
                                             optBool(o, "options", "sumFirst", false));
  auto out = Napi::Object::New(info.Env());
  auto back = [&](const torch::Tensor& t) -> Napi::Value { return t.defined() ? Napi::Value(wrapTensor(info.Env(), t.to(at::kFloat).contiguous())) : info.Env().Null(); };
  out.Set("output", back(c.output));
  out.Set("gradInput", back(c.gradInput));
  out.Set("gradResidual", back(c.gradResidual));
  out.Set("gradWeight", back(c.gradWeight));
  out.Set("gradBias", back(c.gradBias));
  out.Set("implementation", Napi::String::New(info.Env(), c.implementation));
  return out;
}

Napi::Value CentrePriors(const Napi::CallbackInfo& info) {
  std::vector<int64_t> strides;
  Napi::Value sv = arg(info, 0);
  if (!sv.IsArray()) throw Napi::TypeError::New(info.Env(), "Expected an array of integers for strides but received " + describeValue(sv));
  auto arr = sv.As<Napi::Array>();
  for (uint32_t k = 0; k < arr.Length(); ++k) {
    Napi::Value v = arr.Get(k);
    if (!v.IsNumber() || v.As<Napi::Number>().DoubleValue() != std::floor(v.As<Napi::Number>().DoubleValue()))
      throw Napi::TypeError::New(info.Env(), "Expected an integer for strides[" + std::to_string(k) + "] but received " + describeValue(v));
    strides.push_back(static_cast<int64_t>(v.As<Napi::Number>().DoubleValue()));
  }
  const int64_t h = intArg(info, 1, "height", 1, 1 << 20);
  const int64_t w = intArg(info, 2, "width", 1, 1 << 20);
  const auto device = parseDevice(stringArg(info, 3, "device"));
  return wrapTensor(info.Env(), centrePriors(strides, h, w, device));
}

Napi::Value DistanceToBox(const Napi::CallbackInfo& info) {
  const auto points = tensorArg(info, 0, "points");
  const auto distances = tensorArg(info, 1, "distances");
  if (!points.is_floating_point() || points.dim() < 1 || points.size(-1) != 2) throw Napi::RangeError::New(info.Env(), "Expected floating-point points of shape [..., 2]");
  checkBoxes(distances, "distances");
  return wrapTensor(info.Env(), distanceToBox(points, distances, numberArg(info, 2, "height", 0, 1e9), numberArg(info, 3, "width", 0, 1e9)));
}

Napi::Value BoxToDistance(const Napi::CallbackInfo& info) {
  const auto points = tensorArg(info, 0, "points");
  const auto boxes = tensorArg(info, 1, "boxes");
  if (!points.is_floating_point() || points.dim() < 1 || points.size(-1) != 2) throw Napi::RangeError::New(info.Env(), "Expected floating-point points of shape [..., 2]");
  checkBoxes(boxes, "boxes");
  return wrapTensor(info.Env(), boxToDistance(points, boxes));
}

Napi::Value IntegralDistances(const Napi::CallbackInfo& info) {
  const auto reg = tensorArg(info, 0, "reg");
  if (!reg.is_floating_point()) throw Napi::TypeError::New(info.Env(), "Expected a floating-point tensor for reg");
  return wrapTensor(info.Env(), integralDistances(reg, intArg(info, 1, "regMax", 1, 64)));
}

}  // namespace

void registerGeometryExports(Napi::Env env, Napi::Object exports) {
  exportFunction<GenerateAnchors>(env, exports, "generateAnchors");
  exportFunction<BoxEncode>(env, exports, "boxEncode");
  exportFunction<BoxDecode>(env, exports, "boxDecode");
  exportFunction<BoxIou>(env, exports, "boxIou");
  exportFunction<ClipBoxes>(env, exports, "clipBoxes");
  exportFunction<Nms>(env, exports, "nms");
  exportFunction<BatchedNms>(env, exports, "batchedNms");
  exportFunction<RoiAlign>(env, exports, "roiAlign");
  exportFunction<CentrePriors>(env, exports, "centrePriors");
  exportFunction<MaxPool2dWithGradient>(env, exports, "maxPool2dWithGradient");
  exportFunction<FrozenBatchNormWithGradient>(env, exports, "frozenBatchNormWithGradient");
  exportFunction<DistanceToBox>(env, exports, "distanceToBox");
  exportFunction<BoxToDistance>(env, exports, "boxToDistance");
  exportFunction<IntegralDistances>(env, exports, "integralDistances");
}

}  // namespace onestage::binding
