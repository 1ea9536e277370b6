// pytorch-retinanet's focal classification term for one element, and its derivative, shared by the
// CPU loop (focal.cpp) and the CUDA kernel (focal_cuda.cu). Inputs: x (logit, or probability when
// `probabilities`), target t ∈ {0, 1}. p = clamp(σ(x), 1e-4, 1 − 1e-4);
//   t = 1: α (1 − p)^γ (−log p)        t = 0: (1 − α) p^γ (−log(1 − p))
#pragma once
#include <cmath>

#include "core/host_device.h"

namespace onestage {

struct FocalTerm {
  float alpha, gamma;
  bool probabilities;

  ONESTAGE_HD static float powg(float v, float g) { return g == 2.f ? v * v : (g == 1.f ? v : powf(v, g)); }

  /// The loss of one element.
  ONESTAGE_HD float value(float x, bool positive) const {
    float p = probabilities ? x : 1.f / (1.f + expf(-x));
    p = fminf(fmaxf(p, 1e-4f), 1.f - 1e-4f);
    return positive ? alpha * powg(1.f - p, gamma) * -logf(p) : (1.f - alpha) * powg(p, gamma) * -logf(1.f - p);
  }

  /// d loss / dx of one element (0 where the clamp is active, as autograd gives).
  ONESTAGE_HD float derivative(float x, bool positive) const {
    const float raw = probabilities ? x : 1.f / (1.f + expf(-x));
    if (raw < 1e-4f || raw > 1.f - 1e-4f) return 0.f;
    const float dpdx = probabilities ? 1.f : raw * (1.f - raw);
    const float p = raw;
    float dfdp;
    if (positive) {
      const float q = 1.f - p;
      dfdp = -alpha * gamma * powg(q, gamma - 1.f) * -logf(p) + alpha * powg(q, gamma) * (-1.f / p);
    } else {
      dfdp = (1.f - alpha) * gamma * powg(p, gamma - 1.f) * -logf(1.f - p) + (1.f - alpha) * powg(p, gamma) / (1.f - p);
    }
    return dfdp * dpdx;
  }
};

}  // namespace onestage
