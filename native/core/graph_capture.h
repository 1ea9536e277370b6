// Recording work as a CUDA graph, shared by the training step's graphs (core/train/training_session)
// and detect's (core/models/detector): the capture itself, autocast's weight-cast cache kept only where
// no cached bf16 copy can outlive the capture, and the cleanup of a capture that fails. CUDA builds.
#pragma once
#ifdef ONESTAGE_WITH_CUDA
#include <ATen/autocast_mode.h>
#include <ATen/cuda/CUDAGraph.h>
#include <torch/version.h>

#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>

namespace onestage {

/// A graph memory pool: {0, 0} asks for a fresh one (at::cuda::CUDAGraph::pool()'s type).
using GraphPool = decltype(std::declval<at::cuda::CUDAGraph>().pool());

/// Records what `work` queues on the current stream (a side stream, never the default one) as a CUDA
/// graph whose allocations come from `pool`; nothing runs until a replay. Thread-local capture mode:
/// CUDA work on other threads may go on with calls a global capture would refuse (the library's own
/// waits for CaptureScope, core/capture_lock.h); the capturing thread makes none. The caller holds a
/// CaptureScope. On failure the capture is ended and a std::runtime_error `what + " (" + cause + ")"`
/// thrown (the cause's first line).
inline std::unique_ptr<at::cuda::CUDAGraph> captureGraph(GraphPool pool, const std::function<void()>& work, const std::string& what) {
  // Autocast caches the bf16 copy of a weight for the rest of the outermost autocast region (a weight
  // used several times — RetinaNet's head on five levels — is cast once, its gradients summed in bf16,
  // as in eager steps). Kept on when no region is open here: then every cached copy is made inside the
  // captured work and dropped where its region closes, inside it too. Off under an enclosing region: a
  // copy cached before the capture and dropped after it would leave the graph reading freed memory.
  const bool castCache = at::autocast::is_autocast_cache_enabled();
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
  const bool enclosed = at::autocast::is_autocast_enabled(at::kCUDA);
#else
  const bool enclosed = at::autocast::is_enabled();
#endif
  if (enclosed) at::autocast::set_autocast_cache_enabled(false);
  auto graph = std::make_unique<at::cuda::CUDAGraph>();
  try {
    graph->capture_begin(pool, cudaStreamCaptureModeThreadLocal);
    work();
    graph->capture_end();
  } catch (const std::exception& e) {
    at::autocast::set_autocast_cache_enabled(castCache);
    try {
      graph->capture_end();
    } catch (...) {
    }
    const std::string cause = e.what();
    throw std::runtime_error(what + " (" + cause.substr(0, cause.find('\n')) + ")");
  }
  at::autocast::set_autocast_cache_enabled(castCache);
  return graph;
}

}  // namespace onestage
#endif
