// Measurement tools. LibTorch's Kineto profiler around any stretch of work: CUDA kernels, memory copies and the CUDA
// runtime calls of every thread (CUPTI), written as a Chrome trace (chrome://tracing, Perfetto).
// Needs LibTorch ≥ 2 built with Kineto (the PyTorch wheels are); otherwise start() throws.
#pragma once
#include <cstdint>
#include <string>

namespace onestage {

bool profilerAvailable();
void profilerStart();
/// Stops and writes the trace to `path` (atomically).
void profilerStop(const std::string& path);

/// The CUDA caching allocator's bytes on one device: in use now, the most in use since the last
/// reset, and reserved from the driver. Zeros without CUDA.
struct CudaMemory {
  int64_t allocated = 0, peak = 0, reserved = 0;
};
CudaMemory cudaMemory(int device, bool resetPeak);

}  // namespace onestage
