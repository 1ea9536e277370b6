// Data-parallel exports: joining a c10d process group, the collectives the TypeScript side needs
// (the mean of a tensor, an all-gather of integers, a barrier) and the rendezvous store for small payloads. Everything that
// waits on other processes runs on the thread pool.
#include <napi.h>

#include "binding/dist_handle.h"
#include "binding/napi_util.h"
#include "core/dist/process_group.h"

namespace onestage::binding {

namespace {

constexpr napi_type_tag kGroupTag = {0x6f6e657374616765ULL, 0x4469737400000001ULL};

std::string requiredString(const Napi::Object& o, const char* key) {
  const auto v = o.Get(key);
  if (!v.IsString())
    throw Napi::TypeError::New(o.Env(), std::string("Expected a string for options.") + key + " but received " + describeValue(v));
  return v.As<Napi::String>().Utf8Value();
}

int64_t requiredInt(const Napi::Object& o, const char* key, int64_t min, int64_t max) {
  const auto v = o.Get(key);
  if (v.IsUndefined())
    throw Napi::TypeError::New(o.Env(), std::string("Expected an integer for options.") + key + " but received undefined");
  return optInt(o, "options", key, min, max, 0);
}

Napi::Value DistBackends(const Napi::CallbackInfo& info) {
  const auto list = ProcessGroup::availableBackends();
  Napi::Array out = Napi::Array::New(info.Env(), list.size());
  for (size_t i = 0; i < list.size(); ++i) out.Set(static_cast<uint32_t>(i), list[i]);
  return out;
}

Napi::Value DistInitAsync(const Napi::CallbackInfo& info) {
  const Napi::Value v = arg(info, 0);
  if (!v.IsObject() || v.IsArray())
    throw Napi::TypeError::New(info.Env(), "Expected an options object for options but received " + describeValue(v));
  const auto o = v.As<Napi::Object>();
  ProcessGroupOptions p;
  p.backend = requiredString(o, "backend");
  if (p.backend != "gloo" && p.backend != "nccl")
    throw Napi::RangeError::New(info.Env(), "Expected 'gloo' or 'nccl' for options.backend but received '" + p.backend + "'");
  p.masterAddr = requiredString(o, "masterAddr");
  if (p.masterAddr.empty()) throw Napi::RangeError::New(info.Env(), "Expected a host name or address for options.masterAddr but received ''");
  p.masterPort = requiredInt(o, "masterPort", 1, 65535);
  p.worldSize = requiredInt(o, "worldSize", 1, 1 << 20);
  p.rank = requiredInt(o, "rank", 0, p.worldSize - 1);
  p.timeoutMs = optInt(o, "options", "timeoutMs", 1, 1LL << 40, p.timeoutMs);
  p.agentStore = optBool(o, "options", "agentStore", p.agentStore);
  p.interface = optString(o, "options", "interface", p.interface);
  p.deviceIndex = optInt(o, "options", "deviceIndex", 0, 1024, p.deviceIndex);
  return PromiseWorker<std::shared_ptr<ProcessGroup>>::start(
      info.Env(), [p] { return ProcessGroup::create(p); },
      [](Napi::Env env, std::shared_ptr<ProcessGroup>& g) -> Napi::Value { return wrapObject(env, g, &kGroupTag); });
}

Napi::Value DistInfo(const Napi::CallbackInfo& info) {
  const auto g = groupArg(info, 0);
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("rank", static_cast<double>(g->rank()));
  o.Set("worldSize", static_cast<double>(g->worldSize()));
  o.Set("backend", g->backend());
  o.Set("device", g->device().str());
  o.Set("timeoutMs", static_cast<double>(g->options().timeoutMs));
  return o;
}

Napi::Value DistMeanAsync(const Napi::CallbackInfo& info) {
  const auto g = groupArg(info, 0);
  const auto t = tensorArg(info, 1, "tensor");
  if (!t.is_floating_point())
    throw Napi::TypeError::New(info.Env(), "Expected a floating-point tensor for tensor but received " + std::string(c10::toString(t.scalar_type())));
  return tensorPromise(info.Env(), [g, t] { return g->mean(t, "all-reduce (mean) of a tensor"); });
}

Napi::Value DistAllGatherAsync(const Napi::CallbackInfo& info) {
  const auto g = groupArg(info, 0);
  constexpr int64_t kSafe = (int64_t{1} << 53) - 1;  // integers a JavaScript number holds exactly
  const auto values = intArrayArg(info, 1, "values", -kSafe, kSafe);
  return PromiseWorker<std::vector<int64_t>>::start(
      info.Env(), [g, values] { return g->allGather(values, "all-gather of " + std::to_string(values.size()) + " integers"); },
      [](Napi::Env env, std::vector<int64_t>& all) -> Napi::Value {
        Napi::Array out = Napi::Array::New(env, all.size());
        for (size_t i = 0; i < all.size(); ++i) out.Set(static_cast<uint32_t>(i), static_cast<double>(all[i]));
        return out;
      });
}

Napi::Value DistBarrierAsync(const Napi::CallbackInfo& info) {
  const auto g = groupArg(info, 0);
  auto what = stringArg(info, 1, "what");
  if (what.empty()) throw Napi::RangeError::New(info.Env(), "Expected a non-empty label for what but received ''");
  return PromiseWorker<bool>::start(
      info.Env(), [g, what] { g->barrier("barrier (" + what + ")"); return true; },
      [](Napi::Env env, bool&) -> Napi::Value { return env.Undefined(); });
}

std::string keyArg(const Napi::CallbackInfo& info, size_t i) {
  auto key = stringArg(info, i, "key");
  if (key.empty()) throw Napi::RangeError::New(info.Env(), "Expected a non-empty string for key but received ''");
  return key;
}

Napi::Value DistStoreSetAsync(const Napi::CallbackInfo& info) {
  const auto g = groupArg(info, 0);
  const auto key = keyArg(info, 1);
  const Napi::Value v = arg(info, 2);
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array)
    throw Napi::TypeError::New(info.Env(), "Expected a Uint8Array or Buffer for value but received " + describeValue(v));
  const auto bytes = v.As<Napi::Uint8Array>();
  std::vector<uint8_t> data(bytes.Data(), bytes.Data() + bytes.ByteLength());
  return PromiseWorker<bool>::start(
      info.Env(), [g, key, data] { g->storeSet(key, data); return true; },
      [](Napi::Env env, bool&) -> Napi::Value { return env.Undefined(); });
}

Napi::Value DistStoreGetAsync(const Napi::CallbackInfo& info) {
  const auto g = groupArg(info, 0);
  const auto key = keyArg(info, 1);
  return PromiseWorker<std::vector<uint8_t>>::start(
      info.Env(), [g, key] { return g->storeGet(key); },
      [](Napi::Env env, std::vector<uint8_t>& data) -> Napi::Value { return Napi::Buffer<uint8_t>::Copy(env, data.data(), data.size()); });
}

Napi::Value DistStoreDeleteAsync(const Napi::CallbackInfo& info) {
  const auto g = groupArg(info, 0);
  const auto key = keyArg(info, 1);
  return PromiseWorker<bool>::start(
      info.Env(), [g, key] { return g->storeDelete(key); },
      [](Napi::Env env, bool& deleted) -> Napi::Value { return Napi::Boolean::New(env, deleted); });
}

Napi::Value DistDispose(const Napi::CallbackInfo& info) {
  auto* box = objectBoxArg<ProcessGroup>(info, 0, "group", &kGroupTag, "ProcessGroup");
  box->object.reset();
  return info.Env().Undefined();
}

}  // namespace

std::shared_ptr<ProcessGroup> groupArg(const Napi::CallbackInfo& info, size_t i) {
  return objectArg<ProcessGroup>(info, i, "group", &kGroupTag, "ProcessGroup");
}

void registerDistExports(Napi::Env env, Napi::Object exports) {
  exportFunction<DistBackends>(env, exports, "distBackends");
  exportFunction<DistInitAsync>(env, exports, "distInitAsync");
  exportFunction<DistInfo>(env, exports, "distInfo");
  exportFunction<DistMeanAsync>(env, exports, "distMeanAsync");
  exportFunction<DistBarrierAsync>(env, exports, "distBarrierAsync");
  exportFunction<DistAllGatherAsync>(env, exports, "distAllGatherAsync");
  exportFunction<DistStoreSetAsync>(env, exports, "distStoreSetAsync");
  exportFunction<DistStoreGetAsync>(env, exports, "distStoreGetAsync");
  exportFunction<DistStoreDeleteAsync>(env, exports, "distStoreDeleteAsync");
  exportFunction<DistDispose>(env, exports, "distDispose");
}

}  // namespace onestage::binding
