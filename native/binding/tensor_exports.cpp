// Tensor exports: creation from typed arrays, inspection, copy-out, device moves, disposal, and
// the small op set (sync and async) that proves the binding and the parity harness.
#include <napi.h>

#include <cstring>

#include "binding/napi_util.h"
#include "core/capture_lock.h"
#include "core/errors.h"
#include "core/tensor_ops.h"
#include "core/tensor_types.h"

namespace onestage::binding {

namespace {

/// The dtype a typed array holds, by its JavaScript type; TypeError for other views.
torch::ScalarType typedArrayDtype(const Napi::TypedArray& array, const char* name) {
  switch (array.TypedArrayType()) {
    case napi_float32_array: return torch::kFloat32;
    case napi_float64_array: return torch::kFloat64;
    case napi_bigint64_array: return torch::kInt64;
    case napi_int32_array: return torch::kInt32;
    case napi_uint8_array: return torch::kUInt8;
    default:
      throw Napi::TypeError::New(array.Env(), std::string("Expected a Float32Array, Float64Array, BigInt64Array, Int32Array "
                                                          "or Uint8Array for ") + name + " but received another typed array");
  }
}

Napi::Value TensorFromArray(const Napi::CallbackInfo& info) {
  Napi::Value data = arg(info, 0);
  if (!data.IsTypedArray())
    throw Napi::TypeError::New(info.Env(), "Expected a typed array for data but received " + describeValue(data));
  auto array = data.As<Napi::TypedArray>();
  const auto shape = checkShape(numberArrayArg(info, 1, "shape"));
  const auto dtype = parseDtype(stringArg(info, 2, "dtype"));
  const auto device = parseDevice(stringArg(info, 3, "device"));
  const auto arrayType = typedArrayDtype(array, "data");
  const bool boolFromBytes = dtype == torch::kBool && arrayType == torch::kUInt8;
  if (arrayType != dtype && !boolFromBytes)
    throw Napi::TypeError::New(info.Env(), "dtype " + dtypeName(dtype) + " does not match the data, a typed array of " +
                                               dtypeName(arrayType));
  const auto* bytes = static_cast<const uint8_t*>(array.ArrayBuffer().Data()) + array.ByteOffset();
  const size_t length = array.ByteLength();
  if (boolFromBytes)
    for (size_t k = 0; k < length; ++k)
      if (bytes[k] > 1)
        throw Napi::RangeError::New(info.Env(), "Expected 0 or 1 for data[" + std::to_string(k) +
                                                    "] of a bool tensor but received " + std::to_string(bytes[k]));
  const CudaWorkScope work(device.is_cuda());  // an upload: never during a graph capture
  return wrapTensor(info.Env(), tensorFromBytes(bytes, length, shape, dtype, device));
}

Napi::Value TensorShape(const Napi::CallbackInfo& info) {
  const auto t = tensorArg(info, 0, "tensor");
  Napi::Array out = Napi::Array::New(info.Env(), t.dim());
  for (int64_t d = 0; d < t.dim(); ++d) out.Set(static_cast<uint32_t>(d), Napi::Number::New(info.Env(), static_cast<double>(t.size(d))));
  return out;
}

Napi::Value TensorDtype(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), dtypeName(tensorArg(info, 0, "tensor").scalar_type()));
}

/// "channels-last" when the strides are NHWC (what a convolution reads as channels-last), else "contiguous"
/// (NCHW, or any other order).
Napi::Value TensorMemoryFormat(const Napi::CallbackInfo& info) {
  const auto t = tensorArg(info, 0, "tensor");
  const bool nhwc = t.dim() == 4 && t.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
  return Napi::String::New(info.Env(), nhwc ? "channels-last" : "contiguous");
}

Napi::Value TensorDevice(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), deviceName(tensorArg(info, 0, "tensor").device()));
}

template <typename T>
Napi::Value typedArrayCopy(Napi::Env env, const torch::Tensor& cpu) {
  const size_t n = static_cast<size_t>(cpu.numel());
  auto buffer = Napi::ArrayBuffer::New(env, n * sizeof(T));
  if (n > 0) std::memcpy(buffer.Data(), cpu.data_ptr(), n * sizeof(T));
  return Napi::TypedArrayOf<T>::New(env, n, buffer, 0);
}

Napi::Value TensorToArray(const Napi::CallbackInfo& info) {
  const auto t = tensorArg(info, 0, "tensor");
  torch::Tensor cpu;
  {
    const CudaWorkScope work(t.is_cuda());  // a download waits on the device: never during a graph capture
    cpu = contiguousCpu(t);
  }
  Napi::Env env = info.Env();
  switch (cpu.scalar_type()) {
    case torch::kFloat32: return typedArrayCopy<float>(env, cpu);
    case torch::kFloat64: return typedArrayCopy<double>(env, cpu);
    case torch::kInt64: return typedArrayCopy<int64_t>(env, cpu);
    case torch::kInt32: return typedArrayCopy<int32_t>(env, cpu);
    case torch::kUInt8:
    case torch::kBool: return typedArrayCopy<uint8_t>(env, cpu);
    default: throw onestage::TypeError("toArray: tensor has dtype " + std::string(c10::toString(cpu.scalar_type())) +
                                       ", which onestage does not expose");
  }
}

Napi::Value TensorTo(const Napi::CallbackInfo& info) {
  const auto t = tensorArg(info, 0, "tensor");
  const auto device = parseDevice(stringArg(info, 1, "device"));
  requireDeviceAvailable(device);
  const CudaWorkScope work(device.is_cuda() || t.is_cuda());
  return wrapTensor(info.Env(), t.to(device));
}

Napi::Value TensorDispose(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), disposeTensor(info, 0, "tensor"));
}

Napi::Value TensorIsDisposed(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), isDisposedTensor(info, 0, "tensor"));
}

Napi::Value LiveTensors(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(liveTensorCount(info.Env())));
}

Napi::Value TensorMatmul(const Napi::CallbackInfo& info) {
  return wrapTensor(info.Env(), onestage::matmul(tensorArg(info, 0, "a"), tensorArg(info, 1, "b")));
}

Napi::Value TensorMatmulAsync(const Napi::CallbackInfo& info) {
  auto a = tensorArg(info, 0, "a");
  auto b = tensorArg(info, 1, "b");
  return tensorPromise(info.Env(), [a, b] { return onestage::matmul(a, b); });
}

Napi::Value TensorUnary(const Napi::CallbackInfo& info) {
  const auto t = tensorArg(info, 0, "tensor");
  return wrapTensor(info.Env(), unaryOp(stringArg(info, 1, "op"), t));
}

Napi::Value TensorBinary(const Napi::CallbackInfo& info) {
  const auto a = tensorArg(info, 0, "a");
  const auto b = tensorArg(info, 1, "b");
  return wrapTensor(info.Env(), binaryOp(stringArg(info, 2, "op"), a, b));
}

Napi::Value TensorSoftmax(const Napi::CallbackInfo& info) {
  const auto t = tensorArg(info, 0, "tensor");
  const auto op = stringArg(info, 1, "op");
  return wrapTensor(info.Env(), softmaxOp(op, t, intArg(info, 2, "dim", -64, 63)));
}

Napi::Value TensorSum(const Napi::CallbackInfo& info) {
  const auto t = tensorArg(info, 0, "tensor");
  return wrapTensor(info.Env(), sumOp(t, intArrayArg(info, 1, "dims", -64, 63)));
}

Napi::Value TensorSetRequiresGrad(const Napi::CallbackInfo& info) {
  auto t = tensorArg(info, 0, "tensor");
  const bool on = boolArg(info, 1, "requiresGrad");
  if (on && !t.is_floating_point())
    throw onestage::TypeError("only float tensors can require gradients (received " + dtypeName(t.scalar_type()) + ")");
  if (!t.is_leaf() && !on) throw onestage::TypeError("requiresGrad can only be switched off on a leaf tensor");
  t.set_requires_grad(on);
  return info.Env().Undefined();
}

Napi::Value TensorRequiresGrad(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), tensorArg(info, 0, "tensor").requires_grad());
}

Napi::Value TensorGrad(const Napi::CallbackInfo& info) {
  const auto g = tensorArg(info, 0, "tensor").grad();
  if (!g.defined()) return info.Env().Null();
  return wrapTensor(info.Env(), g.detach().clone());
}

Napi::Value TensorClearGrad(const Napi::CallbackInfo& info) {
  auto t = tensorArg(info, 0, "tensor");
  t.mutable_grad() = at::Tensor();
  return info.Env().Undefined();
}

Napi::Value TensorBackwardAsync(const Napi::CallbackInfo& info) {
  auto t = tensorArg(info, 0, "tensor");
  if (t.numel() != 1)
    throw onestage::RangeError("backward: expected a tensor with one element (a loss) but received shape " + describeShape(t.sizes()));
  if (!t.requires_grad())
    throw onestage::TypeError("backward: the tensor does not require gradients (no input of it has requiresGrad)");
  return PromiseWorker<bool>::start(
      info.Env(),
      [t] {
        const c10::DeviceGuard guard(t.device());
        t.backward();
        return true;
      },
      [](Napi::Env env, bool&) -> Napi::Value { return env.Undefined(); });
}

}  // namespace

void registerTensorExports(Napi::Env env, Napi::Object exports) {
  exportFunction<TensorFromArray>(env, exports, "tensorFromArray");
  exportFunction<TensorShape>(env, exports, "tensorShape");
  exportFunction<TensorDtype>(env, exports, "tensorDtype");
  exportFunction<TensorDevice>(env, exports, "tensorDevice");
  exportFunction<TensorMemoryFormat>(env, exports, "tensorMemoryFormat");
  exportFunction<TensorToArray>(env, exports, "tensorToArray");
  exportFunction<TensorTo>(env, exports, "tensorTo");
  exportFunction<TensorDispose>(env, exports, "tensorDispose");
  exportFunction<TensorIsDisposed>(env, exports, "tensorIsDisposed");
  exportFunction<LiveTensors>(env, exports, "liveTensors");
  exportFunction<TensorMatmul>(env, exports, "tensorMatmul");
  exportFunction<TensorMatmulAsync>(env, exports, "tensorMatmulAsync");
  exportFunction<TensorUnary>(env, exports, "tensorUnary");
  exportFunction<TensorBinary>(env, exports, "tensorBinary");
  exportFunction<TensorSoftmax>(env, exports, "tensorSoftmax");
  exportFunction<TensorSum>(env, exports, "tensorSum");
  exportFunction<TensorSetRequiresGrad>(env, exports, "tensorSetRequiresGrad");
  exportFunction<TensorRequiresGrad>(env, exports, "tensorRequiresGrad");
  exportFunction<TensorGrad>(env, exports, "tensorGrad");
  exportFunction<TensorClearGrad>(env, exports, "tensorClearGrad");
  exportFunction<TensorBackwardAsync>(env, exports, "tensorBackwardAsync");
}

}  // namespace onestage::binding
