// Module entry: registers every export. Each export is wrapped by guarded<>, so no C++ exception
// reaches Node; each validates its arguments before calling into native/core.
#include <napi.h>

#include "binding/napi_util.h"
#include "core/capture_lock.h"
#include "core/build_info.h"
#include "core/cpu_allocator.h"
#include "core/cpu_threads.h"
#include "core/profiler.h"

namespace onestage::binding {

void registerTensorExports(Napi::Env env, Napi::Object exports);
void registerModelExports(Napi::Env env, Napi::Object exports);
void registerGeometryExports(Napi::Env env, Napi::Object exports);
void registerLossExports(Napi::Env env, Napi::Object exports);
void registerDataExports(Napi::Env env, Napi::Object exports);
void registerTrainExports(Napi::Env env, Napi::Object exports);
void registerDistExports(Napi::Env env, Napi::Object exports);

namespace {

Napi::Value BuildInfo(const Napi::CallbackInfo& info) {
  const auto b = onestage::buildInfo();
  Napi::Object out = Napi::Object::New(info.Env());
  out.Set("version", b.version);
  out.Set("torchVersion", b.torchVersion);
  out.Set("cudaCompiled", b.cudaCompiled);
  out.Set("cudaAvailable", b.cudaAvailable);
  out.Set("deviceCount", b.deviceCount);
  out.Set("jpegDecoder", b.jpegDecoder);
  return out;
}

Napi::Value SetNumThreads(const Napi::CallbackInfo& info) {
  torch::set_num_threads(static_cast<int>(intArg(info, 0, "threads", 1, 1024)));
  return info.Env().Undefined();
}

Napi::Value GetNumThreads(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), at::get_num_threads()); }

Napi::Value ManualSeed(const Napi::CallbackInfo& info) {
  torch::manual_seed(static_cast<uint64_t>(intArg(info, 0, "seed", 0, 9007199254740991LL)));
  return info.Env().Undefined();
}

Napi::Value SetTf32(const Napi::CallbackInfo& info) {
  const bool on = boolArg(info, 0, "enabled");
  at::globalContext().setAllowTF32CuBLAS(on);
  at::globalContext().setAllowTF32CuDNN(on);
  return info.Env().Undefined();
}

Napi::Value SetCudnnBenchmark(const Napi::CallbackInfo& info) {
  at::globalContext().setBenchmarkCuDNN(boolArg(info, 0, "enabled"));
  return info.Env().Undefined();
}

Napi::Value ProfilerAvailable(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), onestage::profilerAvailable()); }

Napi::Value ProfilerStart(const Napi::CallbackInfo& info) {
  onestage::profilerStart();
  return info.Env().Undefined();
}

Napi::Value ProfilerStop(const Napi::CallbackInfo& info) {
  const auto path = stringArg(info, 0, "path");
  if (path.size() < 6 || path.compare(path.size() - 5, 5, ".json") != 0)
    throw Napi::TypeError::New(info.Env(), "Expected a path ending in .json for the profiler's trace but received '" + path + "'");
  onestage::profilerStop(path);
  return info.Env().Undefined();
}

Napi::Value CudaMemory(const Napi::CallbackInfo& info) {
  const auto m = onestage::cudaMemory(static_cast<int>(intArg(info, 0, "device", 0, 1024)), boolArg(info, 1, "resetPeak"));
  Napi::Object out = Napi::Object::New(info.Env());
  out.Set("allocated", static_cast<double>(m.allocated));
  out.Set("peak", static_cast<double>(m.peak));
  out.Set("reserved", static_cast<double>(m.reserved));
  return out;
}

Napi::Value CpuCacheInstall(const Napi::CallbackInfo& info) {
  const double limit = numberArg(info, 0, "limitBytes", 0, 9007199254740991.0);
  onestage::installCachingCpuAllocator(static_cast<uint64_t>(limit));
  return info.Env().Undefined();
}

Napi::Value CpuMemory(const Napi::CallbackInfo& info) {
  if (boolArg(info, 0, "resetPeak")) onestage::resetCpuPeak();
  const auto m = onestage::cpuMemoryStats();
  Napi::Object out = Napi::Object::New(info.Env());
  out.Set("enabled", m.enabled);
  out.Set("allocated", static_cast<double>(m.allocated));
  out.Set("peak", static_cast<double>(m.peakAllocated));
  out.Set("cached", static_cast<double>(m.cached));
  out.Set("cacheLimit", static_cast<double>(m.cacheLimit));
  out.Set("hits", static_cast<double>(m.hits));
  out.Set("misses", static_cast<double>(m.misses));
  return out;
}

Napi::Value EmptyCpuCache(const Napi::CallbackInfo& info) {
  onestage::emptyCpuCache();
  return info.Env().Undefined();
}

Napi::Value Synchronize(const Napi::CallbackInfo& info) {
#ifdef ONESTAGE_WITH_CUDA
  if (torch::cuda::is_available()) {
    const CudaWorkScope work;  // waits for every stream: not while a graph is being captured
    torch::cuda::synchronize();
  }
#endif
  return info.Env().Undefined();
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  initAddonData(env);
  onestage::applyDefaultThreads();  // LibTorch's CPU threads: one per physical core (core/cpu_threads.h)
  exportFunction<BuildInfo>(env, exports, "buildInfo");
  exportFunction<SetNumThreads>(env, exports, "setNumThreads");
  exportFunction<GetNumThreads>(env, exports, "getNumThreads");
  exportFunction<ManualSeed>(env, exports, "manualSeed");
  exportFunction<SetTf32>(env, exports, "setTf32");
  exportFunction<Synchronize>(env, exports, "synchronize");
  exportFunction<SetCudnnBenchmark>(env, exports, "setCudnnBenchmark");
  exportFunction<ProfilerAvailable>(env, exports, "profilerAvailable");
  exportFunction<ProfilerStart>(env, exports, "profilerStart");
  exportFunction<ProfilerStop>(env, exports, "profilerStop");
  exportFunction<CudaMemory>(env, exports, "cudaMemory");
  exportFunction<CpuCacheInstall>(env, exports, "cpuCacheInstall");
  exportFunction<CpuMemory>(env, exports, "cpuMemory");
  exportFunction<EmptyCpuCache>(env, exports, "emptyCpuCache");
  registerTensorExports(env, exports);
  registerModelExports(env, exports);
  registerGeometryExports(env, exports);
  registerLossExports(env, exports);
  registerDataExports(env, exports);
  registerTrainExports(env, exports);
  registerDistExports(env, exports);
  return exports;
}

}  // namespace
}  // namespace onestage::binding

static Napi::Object InitOnestage(Napi::Env env, Napi::Object exports) {
  return onestage::binding::Init(env, exports);
}
NODE_API_MODULE(onestage, InitOnestage)
