#include "core/cpu_allocator.h"

#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>
#include <torch/version.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <mutex>
#include <unordered_map>
#include <vector>

// LibTorch 2.3 made Allocator::allocate non-const and added the pure virtual copy_data
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 3)
#define ONESTAGE_ALLOCATE_QUALIFIER
#define ONESTAGE_ALLOCATOR_COPY_DATA 1
#else
#define ONESTAGE_ALLOCATE_QUALIFIER const
#define ONESTAGE_ALLOCATOR_COPY_DATA 0
#endif

namespace onestage {

namespace {

constexpr size_t kMinCached = size_t{64} << 10;  // smaller blocks: glibc's bins serve them well
constexpr size_t kPage = 4096;

/// LibTorch CPU allocator keeping freed blocks of 64 KiB and more for reuse (best fit within 1/8),
/// the least recently freed returned to the system first when the cache is full. Thread-safe; blocks
/// may be freed on any thread.
class CachingCpuAllocator final : public c10::Allocator {
 public:
  /// The process's one instance. Immortal on purpose: LibTorch tensors can be freed during static
  /// destruction, after a destructor of this object would have run.
  static CachingCpuAllocator& instance() {
    static auto* const allocator = new CachingCpuAllocator();
    return *allocator;
  }

  /// Every block carries `release` as its deleter (raw_deleter's contract); small ones are not cached.
  c10::DataPtr allocate(size_t nbytes) ONESTAGE_ALLOCATE_QUALIFIER override {
    void* p = nbytes < kMinCached ? c10::alloc_cpu(nbytes) : obtain(nbytes);
    return {p, p, &release, c10::Device(c10::DeviceType::CPU)};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &release; }

#if ONESTAGE_ALLOCATOR_COPY_DATA
  void copy_data(void* dest, const void* src, size_t count) const override { std::memcpy(dest, src, count); }
#endif

  void setLimit(uint64_t bytes) {
    std::vector<void*> evicted;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      limit_ = bytes;
      evictLocked(0, limit_, evicted);
    }
    for (void* p : evicted) c10::free_cpu(p);
  }

  CpuMemoryStats stats() const {
    std::lock_guard<std::mutex> lock(mutex_);
    CpuMemoryStats s = stats_;
    s.cacheLimit = limit_;
    return s;
  }

  void resetPeak() {
    std::lock_guard<std::mutex> lock(mutex_);
    stats_.peakAllocated = stats_.allocated;
  }

  void empty() const {
    std::vector<void*> evicted;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      evictLocked(0, 0, evicted);
    }
    for (void* p : evicted) c10::free_cpu(p);
  }

  void markEnabled() {
    std::lock_guard<std::mutex> lock(mutex_);
    stats_.enabled = true;
  }

 private:
  CachingCpuAllocator() = default;

  struct Entry {
    void* block;
    uint64_t stamp;  // when it was freed (orders eviction)
  };
  using FreeList = std::multimap<size_t, Entry>;

  static void release(void* p) {
    if (p != nullptr) instance().give(p);
  }

  void* obtain(size_t nbytes) const {
    const size_t size = (nbytes + kPage - 1) / kPage * kPage;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      const auto it = free_.lower_bound(size);
      if (it != free_.end() && it->first - size <= size / 8) {
        void* p = it->second.block;
        const size_t blockSize = it->first;
        byAge_.erase(it->second.stamp);
        free_.erase(it);
        stats_.cached -= blockSize;
        ++stats_.hits;
        handOutLocked(p, blockSize);
        return p;
      }
      ++stats_.misses;
    }
    void* p = nullptr;
    try {
      p = c10::alloc_cpu(size);
    } catch (const c10::Error&) {
      // out of memory: give the cached blocks back and try once more
      empty();
      p = c10::alloc_cpu(size);
    }
    std::lock_guard<std::mutex> lock(mutex_);
    handOutLocked(p, size);
    return p;
  }

  void handOutLocked(void* p, size_t size) const {
    live_.emplace(p, size);
    stats_.allocated += size;
    stats_.peakAllocated = std::max(stats_.peakAllocated, stats_.allocated);
  }

  void give(void* p) {
    std::vector<void*> evicted;
    bool keep = false;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      const auto it = live_.find(p);
      if (it != live_.end()) {
        const size_t size = it->second;
        live_.erase(it);
        stats_.allocated -= size;
        if (size <= limit_) {
          evictLocked(size, limit_, evicted);
          const uint64_t stamp = ++clock_;
          byAge_.emplace(stamp, free_.emplace(size, Entry{p, stamp}));
          stats_.cached += size;
          keep = true;
        }
      }
    }
    for (void* q : evicted) c10::free_cpu(q);
    if (!keep) c10::free_cpu(p);  // a small block, or one larger than the whole cache
  }

  /// Moves the least recently freed blocks to `out` until `room` more bytes fit under `limit`.
  void evictLocked(size_t room, uint64_t limit, std::vector<void*>& out) const {
    while (!byAge_.empty() && stats_.cached + room > limit) {
      const auto oldest = byAge_.begin();
      const auto entry = oldest->second;
      out.push_back(entry->second.block);
      stats_.cached -= entry->first;
      free_.erase(entry);
      byAge_.erase(oldest);
    }
  }

  mutable std::mutex mutex_;
  mutable FreeList free_;                                  // freed blocks by size
  mutable std::map<uint64_t, FreeList::iterator> byAge_;   // the same blocks by when they were freed
  mutable std::unordered_map<void*, size_t> live_;         // blocks handed out → their sizes
  mutable CpuMemoryStats stats_;
  mutable uint64_t clock_ = 0;
  uint64_t limit_ = 0;
};

}  // namespace

void installCachingCpuAllocator(uint64_t cacheLimitBytes) {
  auto& allocator = CachingCpuAllocator::instance();
  allocator.setLimit(cacheLimitBytes);
  static std::once_flag installed;
  std::call_once(installed, [&] {
    c10::SetCPUAllocator(&allocator, /*priority=*/0);
    if (c10::GetCPUAllocator() == &allocator) allocator.markEnabled();
  });
}

CpuMemoryStats cpuMemoryStats() { return CachingCpuAllocator::instance().stats(); }

void resetCpuPeak() { CachingCpuAllocator::instance().resetPeak(); }

void emptyCpuCache() { CachingCpuAllocator::instance().empty(); }

}  // namespace onestage
