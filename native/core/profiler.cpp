#include "core/profiler.h"

#include <torch/torch.h>

#include <cstdio>
#include <mutex>
#include <random>
#include <set>
#include <stdexcept>

#ifdef ONESTAGE_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif

#if TORCH_VERSION_MAJOR >= 2 && defined(__has_include)
#if __has_include(<torch/csrc/autograd/profiler_kineto.h>)
#include <torch/csrc/autograd/profiler_kineto.h>
#define ONESTAGE_HAS_KINETO 1
#endif
#endif

namespace onestage {

bool profilerAvailable() {
#ifdef ONESTAGE_HAS_KINETO
  return true;
#else
  return false;
#endif
}

#ifdef ONESTAGE_HAS_KINETO
namespace {
namespace prof = torch::profiler::impl;
std::mutex profilerMutex;
bool running = false;
std::set<prof::ActivityType> activities() {
  std::set<prof::ActivityType> a{prof::ActivityType::CPU};
  if (torch::cuda::is_available()) a.insert(prof::ActivityType::CUDA);
  return a;
}
}  // namespace

void profilerStart() {
  std::lock_guard<std::mutex> lock(profilerMutex);
  if (running) throw std::runtime_error("the profiler is already running");
  const prof::ProfilerConfig config(prof::ProfilerState::KINETO);
  torch::autograd::profiler::prepareProfiler(config, activities());
  torch::autograd::profiler::enableProfiler(config, activities());
  running = true;
}

void profilerStop(const std::string& path) {
  std::lock_guard<std::mutex> lock(profilerMutex);
  if (!running) throw std::runtime_error("the profiler is not running");
  running = false;
  auto result = torch::autograd::profiler::disableProfiler();
  std::random_device rd;
  const std::string tmp = path + ".tmp-" + std::to_string(rd());
  result->save(tmp);
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw std::runtime_error("cannot write " + path);
  }
}
#else
void profilerStart() {
  throw std::runtime_error("profiling needs LibTorch ≥ 2 with Kineto; this addon was built against LibTorch " + std::string(TORCH_VERSION));
}
void profilerStop(const std::string&) { throw std::runtime_error("the profiler is not running"); }
#endif

CudaMemory cudaMemory(int device, bool resetPeak) {
  CudaMemory m;
#ifdef ONESTAGE_WITH_CUDA
  if (!torch::cuda::is_available() || device < 0 || device >= static_cast<int>(torch::cuda::device_count())) return m;
  const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device);
  m.allocated = stats.allocated_bytes[0].current;  // [0]: the aggregate over pool kinds
  m.peak = stats.allocated_bytes[0].peak;
  m.reserved = stats.reserved_bytes[0].current;
  if (resetPeak) c10::cuda::CUDACachingAllocator::resetPeakStats(device);
#else
  (void)device;
  (void)resetPeak;
#endif
  return m;
}

}  // namespace onestage
