// How many threads LibTorch's CPU operations use by default. PyTorch's rule is one per physical core,
// but LibTorch counts cores with cpuinfo (CPUID), which reads a single core on some virtual machines
// whose kernel reports more (the 2-core development VM: 1) — and then every CPU operation runs on one
// thread. onestage counts the cores the kernel reports instead.
#pragma once

namespace onestage {

/// Physical cores this process may run on: distinct (physical id, core id) pairs of /proc/cpuinfo among
/// the CPUs of its affinity mask (the mask's size where /proc/cpuinfo has no core ids), at most the
/// cgroup's CPU quota rounded up; at least 1.
int physicalCoreCount();

/// Called once at load: raises LibTorch's intra-op threads to physicalCoreCount() unless
/// OMP_NUM_THREADS or MKL_NUM_THREADS is set (LibTorch reads those itself) or it already uses as
/// many. Returns the count in use.
int applyDefaultThreads();

/// For its lifetime, the calling thread's CPU operations use `threads` threads (its own OpenMP setting,
/// restored at the end; with a LibTorch without OpenMP nothing changes): the CPU replicas of a training
/// step split the cores between them instead of each taking all of them (2 replicas × 2 threads on
/// 2 cores oversubscribe them; measured on the 2-core VM the difference was within its noise).
class ThreadShare {
 public:
  explicit ThreadShare(int threads);
  ~ThreadShare();
  ThreadShare(const ThreadShare&) = delete;
  ThreadShare& operator=(const ThreadShare&) = delete;

 private:
  int previous_ = 0;
};

}  // namespace onestage
