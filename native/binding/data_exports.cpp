// Data exports: decoding JPEGs, batching decoded images into a normalised tensor, the contrastive second view.
#include <napi.h>

#include "binding/napi_util.h"
#include "core/data/collate.h"
#include "core/data/contrastive_views.h"
#include "core/data/jpeg_decode.h"
#include "core/data/upload.h"
#include "core/tensor_types.h"

namespace onestage::binding {

namespace {

std::array<double, 3> triple(const Napi::CallbackInfo& info, size_t i, const char* name) {
  const auto v = numberArrayArg(info, i, name);
  if (v.size() != 3) throw Napi::RangeError::New(info.Env(), std::string("Expected 3 numbers for ") + name);
  return {v[0], v[1], v[2]};
}

Napi::Value CollateImagesAsync(const Napi::CallbackInfo& info) {
  Napi::Value list = arg(info, 0);
  if (!list.IsArray()) throw Napi::TypeError::New(info.Env(), "Expected an array of Uint8Arrays for images but received " + describeValue(list));
  auto arr = list.As<Napi::Array>();
  const auto sizes = intArrayArg(info, 1, "sizes", 1, 1 << 20);
  if (sizes.size() != 2 * arr.Length())
    throw Napi::RangeError::New(info.Env(), "Expected a [height, width] pair in sizes for each of the " + std::to_string(arr.Length()) + " images");
  const int64_t H = intArg(info, 2, "height", 1, 1 << 20);
  const int64_t W = intArg(info, 3, "width", 1, 1 << 20);
  const auto mean = triple(info, 4, "mean");
  const auto std = triple(info, 5, "std");
  for (double s : std)
    if (!(s > 0)) throw Napi::RangeError::New(info.Env(), "std values must be positive");
  const auto device = parseDevice(stringArg(info, 6, "device"));
  requireDeviceAvailable(device);
  // where the bytes become normalised floats: "host" (collateImages), or "device" (packImages, uploaded
  // as uint8 — a quarter of the bytes — and normalisePacked there); default: the device for CUDA
  std::string where = device.is_cpu() ? "host" : "device";
  if (info.Length() > 7 && !info[7].IsUndefined()) {
    where = stringArg(info, 7, "normalise");
    if (where != "host" && where != "device")
      throw Napi::RangeError::New(info.Env(), "Expected 'host' or 'device' for normalise but received '" + where + "'");
  }
  std::vector<ImageView> views;
  std::vector<Napi::Value> keep;
  for (uint32_t k = 0; k < arr.Length(); ++k) {
    Napi::Value e = arr.Get(k);
    if (!e.IsTypedArray() || e.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array)
      throw Napi::TypeError::New(info.Env(), "Expected a Uint8Array for images[" + std::to_string(k) + "] but received " + describeValue(e));
    auto u8 = e.As<Napi::Uint8Array>();
    const int64_t h = sizes[2 * k], w = sizes[2 * k + 1];
    if (static_cast<int64_t>(u8.ElementLength()) != h * w * 3)
      throw Napi::RangeError::New(info.Env(), "images[" + std::to_string(k) + "] has " + std::to_string(u8.ElementLength()) +
                                                  " bytes but " + std::to_string(h) + "×" + std::to_string(w) + " RGB needs " +
                                                  std::to_string(h * w * 3));
    views.push_back({u8.Data(), h, w});
    keep.push_back(e);
  }
  return PromiseWorker<torch::Tensor>::start(
      info.Env(),
      [views, H, W, mean, std, device, where] {
        // collated straight into page-locked memory when headed for CUDA, then copied off the training stream
        if (where == "device") {
          std::vector<std::array<int64_t, 2>> sizes;
          for (const auto& v : views) sizes.push_back({v.height, v.width});
          const auto packed = packImages(views, H, W, stagingOptions(device, torch::kUInt8));
          return uploadTensors({packed}, device, [&](const torch::Tensor& t) { return normalisePacked(t, sizes, mean, std); })[0];
        }
        auto t = collateImages(views, H, W, mean, std, stagingOptions(device, torch::kFloat32));
        return device.is_cpu() ? t : uploadTensors({t}, device)[0];
      },
      [](Napi::Env env, torch::Tensor& t) -> Napi::Value { return wrapTensor(env, t); }, keep);
}

Napi::Value UploadAsync(const Napi::CallbackInfo& info) {
  auto tensor = tensorArg(info, 0, "tensor");
  if (!tensor.is_cpu()) throw Napi::TypeError::New(info.Env(), "upload: expected a CPU tensor but received one on " + tensor.device().str());
  const auto device = parseDevice(stringArg(info, 1, "device"));
  requireDeviceAvailable(device);
  return tensorPromise(info.Env(), [tensor, device] { return uploadTensors({tensor}, device)[0]; });
}

Napi::Value ContrastiveViewsAsync(const Napi::CallbackInfo& info) {
  auto images = tensorArg(info, 0, "images");
  auto annotations = tensorArg(info, 1, "annotations");
  auto factors = tensorArg(info, 2, "factors");
  return tensorPromise(info.Env(), [images, annotations, factors] {
    const c10::DeviceGuard guard(images.device());
    return contrastiveViews(images, annotations, factors);
  });
}

/// A non-empty file path at argument i.
std::string filePathArg(const Napi::CallbackInfo& info, size_t i) {
  std::string file = stringArg(info, i, "file");
  if (file.empty()) throw Napi::TypeError::New(info.Env(), "Expected a file path for file but received an empty string");
  return file;
}

// decodeJpegAsync(file, out, width, height, flip, extract, maxPixels) → Promise<{ decoded, reason,
// lasting, width, height, shrink }>: the JPEG decoded into `out` (resized to width × height unless both are 0,
// mirrored, the window extract = [left, top, width, height] or null kept); decoded false: declined.
Napi::Value DecodeJpegAsync(const Napi::CallbackInfo& info) {
  JpegRequest r;
  r.file = filePathArg(info, 0);
  Napi::Value out = arg(info, 1);
  if (!out.IsTypedArray() || out.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array)
    throw Napi::TypeError::New(info.Env(), "Expected a Uint8Array for out but received " + describeValue(out));
  auto u8 = out.As<Napi::Uint8Array>();
  r.width = static_cast<int>(intArg(info, 2, "width", 0, 1 << 20));
  r.height = static_cast<int>(intArg(info, 3, "height", 0, 1 << 20));
  if ((r.width == 0) != (r.height == 0)) throw Napi::RangeError::New(info.Env(), "width and height must both be 0 (no resize) or both positive");
  r.flip = boolArg(info, 4, "flip");
  if (!arg(info, 5).IsNull() && !arg(info, 5).IsUndefined()) {
    const auto e = intArrayArg(info, 5, "extract", 0, 1 << 20);
    if (e.size() != 4 || e[2] < 1 || e[3] < 1)
      throw Napi::RangeError::New(info.Env(), "Expected [left, top, width, height] with a positive width and height for extract");
    r.extractLeft = static_cast<int>(e[0]);
    r.extractTop = static_cast<int>(e[1]);
    r.extractWidth = static_cast<int>(e[2]);
    r.extractHeight = static_cast<int>(e[3]);
  }
  r.maxPixels = static_cast<uint64_t>(numberArg(info, 6, "maxPixels", 1, 9007199254740991.0));
  uint8_t* data = u8.Data();
  const size_t capacity = u8.ElementLength();
  return PromiseWorker<JpegOutcome>::start(
      info.Env(), [r, data, capacity] { return decodeJpegFile(r, data, capacity); },
      [](Napi::Env env, JpegOutcome& o) -> Napi::Value {
        Napi::Object res = Napi::Object::New(env);
        res.Set("decoded", o.decoded);
        res.Set("reason", o.reason);
        res.Set("lasting", o.lasting);
        res.Set("width", o.width);
        res.Set("height", o.height);
        res.Set("shrink", o.shrink);
        return res;
      },
      {out});
}

// jpegHeaderAsync(file) → Promise<{ read, reason, lasting, width, height }>: a JPEG's size from its header.
Napi::Value JpegHeaderAsync(const Napi::CallbackInfo& info) {
  const std::string file = filePathArg(info, 0);
  return PromiseWorker<JpegHeader>::start(
      info.Env(), [file] { return readJpegHeader(file); },
      [](Napi::Env env, JpegHeader& h) -> Napi::Value {
        Napi::Object res = Napi::Object::New(env);
        res.Set("read", h.read);
        res.Set("reason", h.reason);
        res.Set("lasting", h.lasting);
        res.Set("width", h.width);
        res.Set("height", h.height);
        return res;
      });
}

}  // namespace

void registerDataExports(Napi::Env env, Napi::Object exports) {
  exportFunction<CollateImagesAsync>(env, exports, "collateImagesAsync");
  exportFunction<UploadAsync>(env, exports, "uploadAsync");
  exportFunction<ContrastiveViewsAsync>(env, exports, "contrastiveViewsAsync");
  exportFunction<DecodeJpegAsync>(env, exports, "decodeJpegAsync");
  exportFunction<JpegHeaderAsync>(env, exports, "jpegHeaderAsync");
}

}  // namespace onestage::binding
