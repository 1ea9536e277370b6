// The model behind a JavaScript handle, for exports outside model_exports.cpp.
#pragma once
#include <napi.h>

#include <memory>

#include "core/models/detector.h"

namespace onestage::binding {

/// Argument `i` as a live model; TypeError for anything else, Error when disposed.
std::shared_ptr<Detector> modelArg(const Napi::CallbackInfo& info, size_t i = 0);

}  // namespace onestage::binding
