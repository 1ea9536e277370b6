#include "core/cpu_threads.h"

#include <ATen/Parallel.h>
#include <sched.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <set>
#include <string>
#include <thread>
#include <utility>

// OpenMP's per-thread setting, from the runtime LibTorch loaded: declared weak here (absent without one;
// this file is not compiled with -fopenmp); with -fopenmp, <omp.h>'s declarations
#ifdef _OPENMP
#include <omp.h>
#else
extern "C" {
__attribute__((weak)) void omp_set_num_threads(int) noexcept;
__attribute__((weak)) int omp_get_max_threads(void) noexcept;
}
#endif

namespace onestage {

namespace {

/// "key : value" of a /proc/cpuinfo line (false for other lines).
bool cpuinfoField(const std::string& line, std::string& key, std::string& value) {
  const auto colon = line.find(':');
  if (colon == std::string::npos) return false;
  const auto trim = [](std::string s) {
    const auto a = s.find_first_not_of(" \t");
    const auto b = s.find_last_not_of(" \t");
    return a == std::string::npos ? std::string() : s.substr(a, b - a + 1);
  };
  key = trim(line.substr(0, colon));
  value = trim(line.substr(colon + 1));
  return true;
}

/// The cgroup's CPU quota in CPUs, rounded up (v2 cpu.max, else v1 cfs quota); 0 without one.
int cgroupCpuLimit() {
  double quota = -1, period = 0;
  std::ifstream v2("/sys/fs/cgroup/cpu.max");
  std::string q;
  if (v2 >> q >> period) {
    if (q != "max") quota = std::atof(q.c_str());
  } else {
    std::ifstream v1q("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"), v1p("/sys/fs/cgroup/cpu/cpu.cfs_period_us");
    if (!(v1q >> quota) || !(v1p >> period)) quota = -1;
  }
  if (quota <= 0 || period <= 0) return 0;
  return std::max(1, static_cast<int>(std::ceil(quota / period)));
}

}  // namespace

int physicalCoreCount() {
  cpu_set_t mask;
  CPU_ZERO(&mask);
  const bool haveMask = sched_getaffinity(0, sizeof(mask), &mask) == 0;
  const int allowed = haveMask ? CPU_COUNT(&mask) : static_cast<int>(std::thread::hardware_concurrency());
  std::set<std::pair<std::string, std::string>> cores;
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line, key, value, physical = "0", core;
  int processor = -1;
  const auto finish = [&] {
    if (processor >= 0 && !core.empty() && (!haveMask || (processor < CPU_SETSIZE && CPU_ISSET(processor, &mask)))) cores.emplace(physical, core);
  };
  while (std::getline(cpuinfo, line)) {
    if (!cpuinfoField(line, key, value)) continue;
    if (key == "processor") {
      finish();
      processor = std::atoi(value.c_str());
      physical = "0";
      core.clear();
    } else if (key == "physical id") {
      physical = value;
    } else if (key == "core id") {
      core = value;
    }
  }
  finish();
  int count = cores.empty() ? allowed : static_cast<int>(cores.size());
  if (allowed > 0) count = std::min(count, allowed);
  if (const int limit = cgroupCpuLimit(); limit > 0) count = std::min(count, limit);
  return std::max(1, count);
}

int applyDefaultThreads() {
  const auto set = [](const char* name) {
    const char* v = std::getenv(name);
    return v != nullptr && *v != '\0';
  };
  if (!set("OMP_NUM_THREADS") && !set("MKL_NUM_THREADS")) {
    const int cores = physicalCoreCount();
    if (at::get_num_threads() < cores) at::set_num_threads(cores);
  }
  return at::get_num_threads();
}

ThreadShare::ThreadShare(int threads) {
  (void)at::get_num_threads();  // ATen's one-time set-up of this thread first (it would reset the setting later)
#ifndef _OPENMP
  if (omp_set_num_threads == nullptr || omp_get_max_threads == nullptr) return;
#endif
  previous_ = omp_get_max_threads();
  omp_set_num_threads(std::max(1, threads));
}

ThreadShare::~ThreadShare() {
  if (previous_ > 0) omp_set_num_threads(previous_);
}

}  // namespace onestage
