#include "core/capture_lock.h"

namespace onestage {

std::shared_mutex& captureLock() {
  static std::shared_mutex lock;
  return lock;
}

}  // namespace onestage
