// A CUDA graph capture forbids, on every other thread, calls that would wait on the device
// (page-locked allocations, stream or device synchronisation, freeing device memory). The library's
// own such calls outside the training step — the DataLoader's uploads — take this lock shared; a
// capture takes it exclusively. Process-wide, as the device is.
#pragma once
#include <shared_mutex>

namespace onestage {

std::shared_mutex& captureLock();

}  // namespace onestage
