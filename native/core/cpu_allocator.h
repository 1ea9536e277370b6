// A caching allocator for LibTorch's CPU tensors (the CPU counterpart of the CUDA caching allocator).
//
// Every large CPU tensor LibTorch frees is kept in a free list by size and handed to the next request
// of (about) that size, instead of going back to glibc. Without it, a training step's activations and
// gradients — the same sizes every step — are fresh memory each time: glibc's aligned allocations do not
// fit the chunks they freed (posix_memalign asks for size + alignment), so the heap grows and every new
// page is a page fault (measured on the 2-core development VM: sigmoid, multiply and sum over 4.6 M
// floats take 140 ms in fresh memory and 5 ms in reused memory, in Python and in Node alike).
#pragma once
#include <cstddef>
#include <cstdint>

namespace onestage {

struct CpuMemoryStats {
  bool enabled = false;         // the caching allocator is LibTorch's CPU allocator
  uint64_t allocated = 0;       // bytes of live blocks handed out by it (block sizes, ≥ the tensors' bytes)
  uint64_t peakAllocated = 0;   // the most `allocated` has been
  uint64_t cached = 0;          // bytes of freed blocks kept for reuse
  uint64_t cacheLimit = 0;      // the most bytes kept for reuse
  uint64_t hits = 0, misses = 0;  // requests of cacheable size served from the cache / from the system
};

/// Makes the caching allocator LibTorch's CPU allocator (once per process; later calls only change the
/// limit). Blocks under 64 KiB go straight to the system allocator; larger ones are rounded to 4 KiB and
/// reused for requests of up to 1/8 less. At most `cacheLimitBytes` of freed blocks are kept (a freed
/// block past the limit goes back to the system); 0 keeps none.
void installCachingCpuAllocator(uint64_t cacheLimitBytes);

/// Counters of the caching allocator (all zero, enabled false, when it is not installed).
CpuMemoryStats cpuMemoryStats();

/// Restarts the peak from what is live now.
void resetCpuPeak();

/// Returns every cached block to the system.
void emptyCpuCache();

}  // namespace onestage
