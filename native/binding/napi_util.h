// Shared Node-API plumbing: exception conversion, argument checking with messages that name the
// argument, the value received and what was expected, and a promise-returning async worker.
// No maths here: every computation is a call into native/core.
#pragma once
#include <napi.h>
#include <torch/torch.h>

#include <exception>
#include <functional>
#include <string>
#include <vector>

namespace onestage::binding {

/// The JavaScript error for a caught C++ exception: onestage::TypeError/RangeError and c10's
/// TypeError/IndexError keep their kind; c10::Error loses its C++ backtrace.
Napi::Error jsErrorFrom(Napi::Env env, std::exception_ptr error);

/// Wraps an export so that no C++ exception can escape into Node (which would abort).
using Handler = Napi::Value (*)(const Napi::CallbackInfo&);
template <Handler H>
Napi::Value guarded(const Napi::CallbackInfo& info) {
  try {
    return H(info);
  } catch (const Napi::Error&) {
    throw;
  } catch (...) {
    throw jsErrorFrom(info.Env(), std::current_exception());
  }
}
template <Handler H>
void exportFunction(Napi::Env env, Napi::Object exports, const char* name) {
  exports.Set(name, Napi::Function::New(env, guarded<H>, name));
}

/// "-3 of type number", "'abc' of type string", "an object", "undefined", ...
std::string describeValue(const Napi::Value& value);

// Argument readers: argument `i` of the call, named `name` in error messages.
Napi::Value arg(const Napi::CallbackInfo& info, size_t i);
std::string stringArg(const Napi::CallbackInfo& info, size_t i, const char* name);
bool boolArg(const Napi::CallbackInfo& info, size_t i, const char* name);
/// An integer in [min, max]; TypeError for non-numbers, RangeError for fractions or out of range.
int64_t intArg(const Napi::CallbackInfo& info, size_t i, const char* name, int64_t min, int64_t max);
double numberArg(const Napi::CallbackInfo& info, size_t i, const char* name);
/// A finite number in [min, max].
double numberArg(const Napi::CallbackInfo& info, size_t i, const char* name, double min, double max);
/// An array of numbers (each checked to be a finite number).
std::vector<double> numberArrayArg(const Napi::CallbackInfo& info, size_t i, const char* name);
/// An array of integers in [min, max].
std::vector<int64_t> intArrayArg(const Napi::CallbackInfo& info, size_t i, const char* name, int64_t min,
                                 int64_t max);

// ---- tensors ---------------------------------------------------------------------------------

/// A new JavaScript handle owning `tensor` (counted by liveTensors, reported to the GC as
/// external memory, freed by disposeTensor or by the garbage collector).
Napi::Object wrapTensor(Napi::Env env, torch::Tensor tensor);
/// The tensor behind argument `i`: TypeError when it is not a tensor handle, Error when disposed.
torch::Tensor tensorArg(const Napi::CallbackInfo& info, size_t i, const char* name);
/// An array of minLength…maxLength tensors (each checked as tensorArg checks one).
std::vector<torch::Tensor> tensorListArg(const Napi::CallbackInfo& info, size_t i, const char* name, size_t minLength, size_t maxLength);
/// Frees the tensor now (idempotent). Returns false when it was already disposed.
bool disposeTensor(const Napi::CallbackInfo& info, size_t i, const char* name);
bool isDisposedTensor(const Napi::CallbackInfo& info, size_t i, const char* name);
int64_t liveTensorCount(Napi::Env env);
/// Per-addon-instance state (one per Node environment; no global mutable state).
void initAddonData(Napi::Env env);

// ---- other native objects (models, ...) ------------------------------------------------------

/// A tagged JavaScript object owning a shared_ptr<T>. Disposal drops the handle's reference; async
/// work that copied the shared_ptr keeps the object alive until it finishes.
template <typename T>
struct ObjectBox {
  std::shared_ptr<T> object;
};

template <typename T>
Napi::Object wrapObject(Napi::Env env, std::shared_ptr<T> object, const napi_type_tag* tag) {
  auto box = std::make_unique<ObjectBox<T>>();
  box->object = std::move(object);
  Napi::Object handle = Napi::Object::New(env);
  NAPI_THROW_IF_FAILED(env, napi_type_tag_object(env, handle, tag), Napi::Object());
  NAPI_THROW_IF_FAILED(env,
                       napi_wrap(env, handle, box.get(),
                                 [](napi_env, void* raw, void*) { delete static_cast<ObjectBox<T>*>(raw); }, nullptr,
                                 nullptr),
                       Napi::Object());
  box.release();  // owned by the finalizer
  return handle;
}

template <typename T>
ObjectBox<T>* objectBoxArg(const Napi::CallbackInfo& info, size_t i, const char* name, const napi_type_tag* tag,
                           const char* typeName) {
  Napi::Value v = arg(info, i);
  bool tagged = false;
  if (v.IsObject() && napi_check_object_type_tag(info.Env(), v, tag, &tagged) != napi_ok) tagged = false;
  void* raw = nullptr;
  if (!tagged || napi_unwrap(info.Env(), v, &raw) != napi_ok || raw == nullptr)
    throw Napi::TypeError::New(info.Env(), std::string("Expected a ") + typeName + " for " + name + " but received " +
                                               describeValue(v));
  return static_cast<ObjectBox<T>*>(raw);
}

/// The object behind argument `i`; Error when it was disposed.
template <typename T>
std::shared_ptr<T> objectArg(const Napi::CallbackInfo& info, size_t i, const char* name, const napi_type_tag* tag,
                             const char* typeName) {
  auto* box = objectBoxArg<T>(info, i, name, tag, typeName);
  if (!box->object)
    throw Napi::Error::New(info.Env(), std::string(name) + " has been disposed and can no longer be used");
  return box->object;
}

// ---- options objects ---------------------------------------------------------------------------

/// Argument `i` as an options object: undefined gives an empty object; other non-objects a TypeError.
Napi::Object optionsArg(const Napi::CallbackInfo& info, size_t i, const char* name);
/// Field readers: absent (undefined) fields give `fallback`; wrong values a TypeError/RangeError
/// naming `prefix.key`.
double optNumber(const Napi::Object& o, const char* prefix, const char* key, double fallback);
int64_t optInt(const Napi::Object& o, const char* prefix, const char* key, int64_t min, int64_t max, int64_t fallback);
bool optBool(const Napi::Object& o, const char* prefix, const char* key, bool fallback);
std::string optString(const Napi::Object& o, const char* prefix, const char* key, const std::string& fallback);
std::vector<double> optNumbers(const Napi::Object& o, const char* prefix, const char* key, std::vector<double> fallback);
Napi::Object optObject(const Napi::Object& o, const char* prefix, const char* key);

// ---- async -----------------------------------------------------------------------------------

/// Runs `compute` on the libuv thread pool and settles a promise on the main thread with
/// `convert(result)`, or rejects it with the JavaScript error for whatever `compute` threw.
/// `compute` must own (copy) every tensor it uses, never touch Node-API, and never call into JS.
template <typename Result>
class PromiseWorker : public Napi::AsyncWorker {
 public:
  using Compute = std::function<Result()>;
  using Convert = std::function<Napi::Value(Napi::Env, Result&)>;

  static Napi::Promise start(Napi::Env env, Compute compute, Convert convert) {
    return start(env, std::move(compute), std::move(convert), {});
  }

  /// `keep`: JavaScript values (e.g. typed arrays whose memory `compute` reads) held until completion;
  /// the worker releases them on the main thread.
  static Napi::Promise start(Napi::Env env, Compute compute, Convert convert, std::vector<Napi::Value> keep) {
    auto* worker = new PromiseWorker(env, std::move(compute), std::move(convert));  // deletes itself
    for (auto& v : keep) worker->keep_.push_back(Napi::Persistent(v.As<Napi::Object>()));
    auto promise = worker->deferred_.Promise();
    worker->Queue();
    return promise;
  }

 protected:
  void Execute() override {
    try {
      result_ = compute_();
    } catch (...) {
      error_ = std::current_exception();
    }
  }
  void OnOK() override {
    Napi::Env env = Env();
    if (error_) {
      deferred_.Reject(jsErrorFrom(env, error_).Value());
      return;
    }
    try {
      deferred_.Resolve(convert_(env, result_));
    } catch (const Napi::Error& e) {
      deferred_.Reject(e.Value());
    } catch (...) {
      deferred_.Reject(jsErrorFrom(env, std::current_exception()).Value());
    }
  }

 private:
  PromiseWorker(Napi::Env env, Compute compute, Convert convert)
      : Napi::AsyncWorker(env, "onestage"), deferred_(Napi::Promise::Deferred::New(env)),
        compute_(std::move(compute)), convert_(std::move(convert)) {}

  Napi::Promise::Deferred deferred_;
  Compute compute_;
  Convert convert_;
  Result result_{};
  std::exception_ptr error_;
  std::vector<Napi::ObjectReference> keep_;
};

/// A promise for a tensor computed on the thread pool.
inline Napi::Promise tensorPromise(Napi::Env env, std::function<torch::Tensor()> compute) {
  return PromiseWorker<torch::Tensor>::start(env, std::move(compute),
                                             [](Napi::Env e, torch::Tensor& t) -> Napi::Value {
                                               return wrapTensor(e, std::move(t));
                                             });
}

}  // namespace onestage::binding
