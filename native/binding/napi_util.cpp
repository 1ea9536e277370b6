#include "binding/napi_util.h"

#include <cmath>
#include <memory>
#include <sstream>

#include "core/errors.h"

namespace onestage::binding {

namespace {

// Marks handle objects made by this addon, so that no other object is ever unwrapped as a tensor.
constexpr napi_type_tag kTensorTag = {0x6f6e657374616765ULL, 0x54656e736f720001ULL};

struct AddonData {
  int64_t liveTensors = 0;
};

AddonData& addonData(Napi::Env env) {
  auto* data = env.GetInstanceData<AddonData>();
  if (data == nullptr) throw std::logic_error("onestage addon instance data is missing");
  return *data;
}

struct TensorBox {
  torch::Tensor tensor;
  int64_t externalBytes = 0;
  bool disposed = false;
};

int64_t externalBytesOf(const torch::Tensor& t) {
  // only host memory pressures V8's heap heuristics; CUDA memory is reported as nothing
  return t.defined() && t.device().is_cpu() ? static_cast<int64_t>(t.nbytes()) : 0;
}

void release(napi_env env, TensorBox& box) {
  if (box.disposed) return;
  box.disposed = true;
  box.tensor = torch::Tensor();
  if (box.externalBytes != 0) {
    int64_t ignored = 0;
    napi_adjust_external_memory(env, -box.externalBytes, &ignored);
    box.externalBytes = 0;
  }
  void* data = nullptr;
  if (napi_get_instance_data(env, &data) == napi_ok && data != nullptr) --static_cast<AddonData*>(data)->liveTensors;
}

void finalizeTensor(napi_env env, void* raw, void* /*hint*/) {
  std::unique_ptr<TensorBox> box(static_cast<TensorBox*>(raw));
  release(env, *box);
}

std::string truncate(const std::string& s, size_t n = 60) { return s.size() <= n ? s : s.substr(0, n) + "…"; }

std::string formatNumber(double d) {
  std::ostringstream s;
  s << d;
  return s.str();
}

TensorBox* unwrapBoxValue(Napi::Env env, Napi::Value v, const std::string& name) {
  bool tagged = false;
  if (v.IsObject()) {
    if (napi_check_object_type_tag(env, v, &kTensorTag, &tagged) != napi_ok) tagged = false;
  }
  if (!tagged)
    throw Napi::TypeError::New(env, "Expected a Tensor for " + name + " but received " + describeValue(v));
  void* raw = nullptr;
  if (napi_unwrap(env, v, &raw) != napi_ok || raw == nullptr)
    throw Napi::TypeError::New(env, "Expected a Tensor for " + name + " but received a foreign object");
  return static_cast<TensorBox*>(raw);
}

TensorBox* unwrapBox(const Napi::CallbackInfo& info, size_t i, const char* name) {
  return unwrapBoxValue(info.Env(), arg(info, i), name);
}

}  // namespace

Napi::Error jsErrorFrom(Napi::Env env, std::exception_ptr error) {
  try {
    std::rethrow_exception(error);
  } catch (const Napi::Error& e) {
    return e;
  } catch (const onestage::TypeError& e) {
    return Napi::TypeError::New(env, e.what());
  } catch (const onestage::RangeError& e) {
    return Napi::RangeError::New(env, e.what());
  } catch (const c10::TypeError& e) {
    return Napi::TypeError::New(env, e.what_without_backtrace());
  } catch (const c10::IndexError& e) {
    return Napi::RangeError::New(env, e.what_without_backtrace());
  } catch (const c10::Error& e) {
    return Napi::Error::New(env, e.what_without_backtrace());
  } catch (const std::bad_alloc&) {
    return Napi::Error::New(env, "out of memory");
  } catch (const std::exception& e) {
    return Napi::Error::New(env, e.what());
  } catch (...) {
    return Napi::Error::New(env, "unknown native error");
  }
}

std::string describeValue(const Napi::Value& v) {
  switch (v.Type()) {
    case napi_undefined: return "undefined";
    case napi_null: return "null";
    case napi_boolean: return std::string(v.As<Napi::Boolean>().Value() ? "true" : "false") + " of type boolean";
    case napi_number: return formatNumber(v.As<Napi::Number>().DoubleValue()) + " of type number";
    case napi_string: return "'" + truncate(v.As<Napi::String>().Utf8Value()) + "' of type string";
    case napi_symbol: return "a symbol";
    case napi_function: return "a function";
    case napi_external: return "an external";
    case napi_bigint: {
      bool lossless = false;
      return std::to_string(v.As<Napi::BigInt>().Int64Value(&lossless)) + " of type bigint";
    }
    case napi_object: {
      if (v.IsArray()) return "an array of length " + std::to_string(v.As<Napi::Array>().Length());
      if (v.IsTypedArray()) return "a typed array of length " + std::to_string(v.As<Napi::TypedArray>().ElementLength());
      if (v.IsArrayBuffer()) return "an ArrayBuffer";
      bool tagged = false;
      napi_check_object_type_tag(v.Env(), v, &kTensorTag, &tagged);
      return tagged ? "a Tensor" : "an object";
    }
    default: return "a value of unknown type";
  }
}

Napi::Value arg(const Napi::CallbackInfo& info, size_t i) {
  return i < info.Length() ? info[i] : info.Env().Undefined();
}

std::string stringArg(const Napi::CallbackInfo& info, size_t i, const char* name) {
  Napi::Value v = arg(info, i);
  if (!v.IsString())
    throw Napi::TypeError::New(info.Env(), std::string("Expected a string for ") + name + " but received " + describeValue(v));
  return v.As<Napi::String>().Utf8Value();
}

bool boolArg(const Napi::CallbackInfo& info, size_t i, const char* name) {
  Napi::Value v = arg(info, i);
  if (!v.IsBoolean())
    throw Napi::TypeError::New(info.Env(), std::string("Expected a boolean for ") + name + " but received " + describeValue(v));
  return v.As<Napi::Boolean>().Value();
}

double numberArg(const Napi::CallbackInfo& info, size_t i, const char* name) {
  Napi::Value v = arg(info, i);
  if (!v.IsNumber())
    throw Napi::TypeError::New(info.Env(), std::string("Expected a number for ") + name + " but received " + describeValue(v));
  const double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d))
    throw Napi::RangeError::New(info.Env(), std::string("Expected a finite number for ") + name + " but received " + formatNumber(d));
  return d;
}

double numberArg(const Napi::CallbackInfo& info, size_t i, const char* name, double min, double max) {
  const double d = numberArg(info, i, name);
  if (d < min || d > max)
    throw Napi::RangeError::New(info.Env(), std::string("Expected a number between ") + formatNumber(min) + " and " +
                                                formatNumber(max) + " for " + name + " but received " + formatNumber(d));
  return d;
}

int64_t intArg(const Napi::CallbackInfo& info, size_t i, const char* name, int64_t min, int64_t max) {
  Napi::Value v = arg(info, i);
  if (!v.IsNumber())
    throw Napi::TypeError::New(info.Env(), std::string("Expected an integer for ") + name + " but received " + describeValue(v));
  const double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d) || d != std::floor(d) || d < static_cast<double>(min) || d > static_cast<double>(max))
    throw Napi::RangeError::New(info.Env(), std::string("Expected an integer between ") + std::to_string(min) + " and " +
                                                std::to_string(max) + " for " + name + " but received " + formatNumber(d));
  return static_cast<int64_t>(d);
}

std::vector<double> numberArrayArg(const Napi::CallbackInfo& info, size_t i, const char* name) {
  Napi::Value v = arg(info, i);
  if (!v.IsArray())
    throw Napi::TypeError::New(info.Env(), std::string("Expected an array of numbers for ") + name + " but received " + describeValue(v));
  auto array = v.As<Napi::Array>();
  std::vector<double> out;
  out.reserve(array.Length());
  for (uint32_t k = 0; k < array.Length(); ++k) {
    Napi::Value e = array.Get(k);
    if (!e.IsNumber())
      throw Napi::TypeError::New(info.Env(), std::string("Expected a number for ") + name + "[" + std::to_string(k) +
                                                 "] but received " + describeValue(e));
    out.push_back(e.As<Napi::Number>().DoubleValue());
  }
  return out;
}

std::vector<int64_t> intArrayArg(const Napi::CallbackInfo& info, size_t i, const char* name, int64_t min, int64_t max) {
  std::vector<int64_t> out;
  const auto values = numberArrayArg(info, i, name);
  for (size_t k = 0; k < values.size(); ++k) {
    const double d = values[k];
    if (!std::isfinite(d) || d != std::floor(d) || d < static_cast<double>(min) || d > static_cast<double>(max))
      throw Napi::RangeError::New(info.Env(), std::string("Expected an integer between ") + std::to_string(min) + " and " +
                                                  std::to_string(max) + " for " + name + "[" + std::to_string(k) +
                                                  "] but received " + formatNumber(d));
    out.push_back(static_cast<int64_t>(d));
  }
  return out;
}

Napi::Object optionsArg(const Napi::CallbackInfo& info, size_t i, const char* name) {
  Napi::Value v = arg(info, i);
  if (v.IsUndefined()) return Napi::Object::New(info.Env());
  if (!v.IsObject() || v.IsArray() || v.IsFunction())
    throw Napi::TypeError::New(info.Env(), std::string("Expected an object for ") + name + " but received " + describeValue(v));
  return v.As<Napi::Object>();
}

namespace {
std::string fieldName(const char* prefix, const char* key) { return std::string(prefix) + "." + key; }
}  // namespace

double optNumber(const Napi::Object& o, const char* prefix, const char* key, double fallback) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined()) return fallback;
  if (!v.IsNumber())
    throw Napi::TypeError::New(o.Env(), "Expected a number for " + fieldName(prefix, key) + " but received " + describeValue(v));
  const double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d))
    throw Napi::RangeError::New(o.Env(), "Expected a finite number for " + fieldName(prefix, key) + " but received " + formatNumber(d));
  return d;
}

int64_t optInt(const Napi::Object& o, const char* prefix, const char* key, int64_t min, int64_t max, int64_t fallback) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined()) return fallback;
  if (!v.IsNumber())
    throw Napi::TypeError::New(o.Env(), "Expected an integer for " + fieldName(prefix, key) + " but received " + describeValue(v));
  const double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d) || d != std::floor(d) || d < static_cast<double>(min) || d > static_cast<double>(max))
    throw Napi::RangeError::New(o.Env(), "Expected an integer between " + std::to_string(min) + " and " + std::to_string(max) +
                                             " for " + fieldName(prefix, key) + " but received " + formatNumber(d));
  return static_cast<int64_t>(d);
}

bool optBool(const Napi::Object& o, const char* prefix, const char* key, bool fallback) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined()) return fallback;
  if (!v.IsBoolean())
    throw Napi::TypeError::New(o.Env(), "Expected a boolean for " + fieldName(prefix, key) + " but received " + describeValue(v));
  return v.As<Napi::Boolean>().Value();
}

std::string optString(const Napi::Object& o, const char* prefix, const char* key, const std::string& fallback) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined()) return fallback;
  if (!v.IsString())
    throw Napi::TypeError::New(o.Env(), "Expected a string for " + fieldName(prefix, key) + " but received " + describeValue(v));
  return v.As<Napi::String>().Utf8Value();
}

std::vector<double> optNumbers(const Napi::Object& o, const char* prefix, const char* key, std::vector<double> fallback) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined()) return fallback;
  if (!v.IsArray())
    throw Napi::TypeError::New(o.Env(), "Expected an array of numbers for " + fieldName(prefix, key) + " but received " + describeValue(v));
  auto a = v.As<Napi::Array>();
  std::vector<double> out;
  for (uint32_t k = 0; k < a.Length(); ++k) {
    Napi::Value e = a.Get(k);
    if (!e.IsNumber() || !std::isfinite(e.As<Napi::Number>().DoubleValue()))
      throw Napi::TypeError::New(o.Env(), "Expected a finite number for " + fieldName(prefix, key) + "[" + std::to_string(k) +
                                              "] but received " + describeValue(e));
    out.push_back(e.As<Napi::Number>().DoubleValue());
  }
  return out;
}

Napi::Object optObject(const Napi::Object& o, const char* prefix, const char* key) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined()) return Napi::Object::New(o.Env());
  if (!v.IsObject() || v.IsArray() || v.IsFunction())
    throw Napi::TypeError::New(o.Env(), "Expected an object for " + fieldName(prefix, key) + " but received " + describeValue(v));
  return v.As<Napi::Object>();
}

void initAddonData(Napi::Env env) { env.SetInstanceData(std::make_unique<AddonData>().release()); }

int64_t liveTensorCount(Napi::Env env) { return addonData(env).liveTensors; }

Napi::Object wrapTensor(Napi::Env env, torch::Tensor tensor) {
  if (!tensor.defined()) throw std::logic_error("internal error: wrapping an undefined tensor");
  auto box = std::make_unique<TensorBox>();
  box->externalBytes = externalBytesOf(tensor);
  box->tensor = std::move(tensor);
  Napi::Object handle = Napi::Object::New(env);
  NAPI_THROW_IF_FAILED(env, napi_type_tag_object(env, handle, &kTensorTag), Napi::Object());
  NAPI_THROW_IF_FAILED(env, napi_wrap(env, handle, box.get(), finalizeTensor, nullptr, nullptr), Napi::Object());
  TensorBox* owned = box.release();  // the finalizer owns it now
  addonData(env).liveTensors++;
  if (owned->externalBytes != 0) Napi::MemoryManagement::AdjustExternalMemory(env, owned->externalBytes);
  return handle;
}

torch::Tensor tensorArg(const Napi::CallbackInfo& info, size_t i, const char* name) {
  TensorBox* box = unwrapBox(info, i, name);
  if (box->disposed)
    throw Napi::Error::New(info.Env(), std::string(name) + " has been disposed and can no longer be used");
  return box->tensor;
}

std::vector<torch::Tensor> tensorListArg(const Napi::CallbackInfo& info, size_t i, const char* name, size_t minLength, size_t maxLength) {
  Napi::Value v = arg(info, i);
  if (!v.IsArray()) throw Napi::TypeError::New(info.Env(), std::string("Expected an array of Tensors for ") + name + " but received " + describeValue(v));
  const auto a = v.As<Napi::Array>();
  if (a.Length() < minLength || a.Length() > maxLength)
    throw Napi::RangeError::New(info.Env(), std::string("Expected ") + std::to_string(minLength) + "…" + std::to_string(maxLength) + " Tensors for " + name +
                                                " but received " + std::to_string(a.Length()));
  std::vector<torch::Tensor> out;
  for (uint32_t k = 0; k < a.Length(); ++k) {
    const std::string item = std::string(name) + "[" + std::to_string(k) + "]";
    TensorBox* box = unwrapBoxValue(info.Env(), a.Get(k), item);
    if (box->disposed) throw Napi::Error::New(info.Env(), item + " has been disposed and can no longer be used");
    out.push_back(box->tensor);
  }
  return out;
}

bool disposeTensor(const Napi::CallbackInfo& info, size_t i, const char* name) {
  TensorBox* box = unwrapBox(info, i, name);
  const bool wasLive = !box->disposed;
  release(info.Env(), *box);
  return wasLive;
}

bool isDisposedTensor(const Napi::CallbackInfo& info, size_t i, const char* name) {
  return unwrapBox(info, i, name)->disposed;
}

}  // namespace onestage::binding
