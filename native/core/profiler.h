// LibTorch's Kineto profiler around any stretch of work: CUDA kernels, memory copies and the CUDA
// runtime calls of every thread (CUPTI), written as a Chrome trace (chrome://tracing, Perfetto).
// Needs LibTorch ≥ 2 built with Kineto (the PyTorch wheels are); otherwise start() throws.
#pragma once
#include <string>

namespace onestage {

bool profilerAvailable();
void profilerStart();
/// Stops and writes the trace to `path` (atomically).
void profilerStop(const std::string& path);

}  // namespace onestage
