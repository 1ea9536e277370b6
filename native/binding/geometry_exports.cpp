// Geometry exports: anchors, box coder, IoU, clipping, NMS — usable on plain tensors from TS.
#include <napi.h>

#include "binding/configs.h"
#include "binding/napi_util.h"
#include "core/anchors.h"
#include "core/boxes.h"
#include "core/nms.h"

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

}  // namespace

void registerGeometryExports(Napi::Env env, Napi::Object exports) {
  exportFunction<GenerateAnchors>(env, exports, "generateAnchors");
  exportFunction<BoxEncode>(env, exports, "boxEncode");
  exportFunction<BoxDecode>(env, exports, "boxDecode");
  exportFunction<BoxIou>(env, exports, "boxIou");
  exportFunction<ClipBoxes>(env, exports, "clipBoxes");
  exportFunction<Nms>(env, exports, "nms");
  exportFunction<BatchedNms>(env, exports, "batchedNms");
}

}  // namespace onestage::binding
