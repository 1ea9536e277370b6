// Per-element GHM-C pieces shared by the CPU loops (ghm.cpp) and the CUDA kernels (ghm_cuda.cu)
// for the fused labels form: target t = (label == class), gradient norm g = |σ(x) − t|, its bin
// (edges[i] ≤ g < edges[i+1], −1 outside), and binary cross-entropy with logits in PyTorch's stable form.
#pragma once
#include <cmath>
#include <cstdint>

#include "core/host_device.h"

namespace onestage {

ONESTAGE_HD inline float ghmSigmoid(float x) { return 1.f / (1.f + expf(-x)); }

/// Bin of g among `bins` uniform float32 edges (edges[bins] may be past 1); −1 when outside or NaN.
/// 32-bit arithmetic (bins ≤ 100000): 64-bit conversions and compares are slow on the GPU.
ONESTAGE_HD inline int ghmBin(float g, const float* e, int bins) {
  if (!(g >= e[0]) || !(g < e[bins])) return -1;
  const float scaled = g * static_cast<float>(bins);
  int b = scaled >= static_cast<float>(bins) ? bins - 1 : static_cast<int>(scaled);
  while (b > 0 && g < e[b]) --b;
  while (b < bins - 1 && g >= e[b + 1]) ++b;
  return b;
}

/// binary_cross_entropy_with_logits(x, t) as PyTorch computes it.
ONESTAGE_HD inline float bceWithLogits(float x, float t) {
  const float m = fmaxf(-x, 0.f);
  return (1.f - t) * x + m + logf(expf(-m) + expf(-x - m));
}

}  // namespace onestage
