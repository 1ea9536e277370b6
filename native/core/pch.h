// Precompiled header for every translation unit of onestage (core and binding): LibTorch is by far
// the heaviest include, and on a 2-core machine compiling it once saves most of the build.
#pragma once
#include <torch/torch.h>
