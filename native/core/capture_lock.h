// A CUDA graph capture forbids, on every other thread, calls that would wait on the device
// (page-locked allocations, stream or device synchronisation, freeing device memory) — with CUDA
// graphs on by default, another model's step or a transfer from JavaScript could otherwise fail (or
// make the capture fail) when it happens to run during one. So every CUDA job of the library holds
// this process-wide lock shared while it runs (CudaWorkScope: a model's device-thread jobs, the
// DataLoader's uploads, the synchronous transfers and synchronisation called from JavaScript), and a
// capture holds it exclusively (CaptureScope).
#pragma once
#include <shared_mutex>

namespace onestage {

std::shared_mutex& captureLock();

/// The calling thread's shared hold for the scope (re-entrant: nested scopes on one thread hold once).
/// `cuda` false: no hold (work that touches no CUDA device).
class CudaWorkScope {
 public:
  explicit CudaWorkScope(bool cuda = true);
  ~CudaWorkScope();
  CudaWorkScope(const CudaWorkScope&) = delete;
  CudaWorkScope& operator=(const CudaWorkScope&) = delete;

 private:
  bool held_ = false;
};

/// The exclusive hold of a graph capture for the scope. A shared hold of the calling thread is given up
/// first (waiting for it would never end) and taken back at the end.
class CaptureScope {
 public:
  CaptureScope();
  ~CaptureScope();
  CaptureScope(const CaptureScope&) = delete;
  CaptureScope& operator=(const CaptureScope&) = delete;

 private:
  bool hadShare_ = false;
};

}  // namespace onestage
