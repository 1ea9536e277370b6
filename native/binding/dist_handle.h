// The process group behind a JavaScript handle, for exports outside dist_exports.cpp.
#pragma once
#include <napi.h>

#include <memory>

#include "core/dist/process_group.h"

namespace onestage::binding {

/// Argument `i` as a live process group; TypeError for anything else, Error when disposed.
std::shared_ptr<ProcessGroup> groupArg(const Napi::CallbackInfo& info, size_t i);

}  // namespace onestage::binding
