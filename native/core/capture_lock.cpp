#include "core/capture_lock.h"

namespace onestage {

namespace {

// how many CudaWorkScopes are open on this thread (the lock is held shared while > 0)
thread_local int sharedDepth = 0;

}  // namespace

std::shared_mutex& captureLock() {
  static std::shared_mutex lock;
  return lock;
}

CudaWorkScope::CudaWorkScope(bool cuda) : held_(cuda) {
  if (!held_) return;
  if (sharedDepth++ == 0) captureLock().lock_shared();
}

CudaWorkScope::~CudaWorkScope() {
  if (!held_) return;
  if (--sharedDepth == 0) captureLock().unlock_shared();
}

CaptureScope::CaptureScope() : hadShare_(sharedDepth > 0) {
  if (hadShare_) captureLock().unlock_shared();
  captureLock().lock();
}

CaptureScope::~CaptureScope() {
  captureLock().unlock();
  if (hadShare_) captureLock().lock_shared();
}

}  // namespace onestage
