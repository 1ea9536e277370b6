// Reading native config structs from JavaScript option objects (validated; errors name the field).
#pragma once
#include <napi.h>

#include "core/anchors.h"
#include "core/boxes.h"
#include "core/models/retinanet.h"

namespace onestage::binding {

AnchorConfig anchorConfigFrom(const Napi::Object& o, const char* prefix);
BoxCoder boxCoderFrom(const Napi::Object& o, const char* prefix);
RetinaNetConfig retinaNetConfigFrom(const Napi::Object& o);
DetectOptions detectOptionsFrom(const Napi::Object& o);

}  // namespace onestage::binding
