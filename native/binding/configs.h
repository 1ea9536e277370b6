// Reading native config structs from JavaScript option objects (validated; errors name the field).
#pragma once
#include <napi.h>

#include "core/anchors.h"
#include "core/boxes.h"
#include "core/assign/max_iou.h"
#include "core/losses/focal.h"
#include "core/losses/ghm.h"
#include "core/losses/retina_loss.h"
#include "core/assign/dsl.h"
#include "core/losses/nanodet_loss.h"
#include "core/models/nanodet_plus.h"
#include "core/models/retinanet.h"

namespace onestage::binding {

AnchorConfig anchorConfigFrom(const Napi::Object& o, const char* prefix);
BoxCoder boxCoderFrom(const Napi::Object& o, const char* prefix);
RetinaNetConfig retinaNetConfigFrom(const Napi::Object& o);
/// Detection options over the architecture's defaults.
DetectOptions detectOptionsFrom(const Napi::Object& o, DetectOptions defaults = {});
NanoDetPlusConfig nanodetPlusConfigFrom(const Napi::Object& o);
DslAssignerOptions dslAssignerOptionsFrom(const Napi::Object& o, const char* prefix);
NanoDetLossOptions nanodetLossOptionsFrom(const Napi::Object& o);
MaxIoUAssignerOptions assignerOptionsFrom(const Napi::Object& o, const char* prefix);
FocalLossOptions focalOptionsFrom(const Napi::Object& o, const char* prefix);
GhmOptions ghmOptionsFrom(const Napi::Object& o, const char* prefix, GhmOptions defaults);
RetinaLossOptions retinaLossOptionsFrom(const Napi::Object& o);

}  // namespace onestage::binding
