#include "core/losses/focal.h"

#include <ATen/Parallel.h>

#include "core/errors.h"
#include "core/losses/focal_math.h"
#include "core/losses/iou_loss.h"
#include "core/tensor_types.h"

namespace onestage {

void checkDetectionLossInputs(const torch::Tensor& cls, const torch::Tensor& reg, const torch::Tensor& anchors,
                              const torch::Tensor& annotations) {
  checkAnchorsAndAnnotations(anchors, annotations);
  if (!cls.is_floating_point() || cls.dim() != 3)
    throw RangeError("classifications: expected a float tensor of shape [B, N, C] but received " + describeShape(cls.sizes()));
  if (!reg.is_floating_point() || reg.dim() != 3 || reg.size(2) != 4)
    throw RangeError("regressions: expected a float tensor of shape [B, N, 4] but received " + describeShape(reg.sizes()));
  const int64_t B = cls.size(0), N = cls.size(1);
  if (reg.size(0) != B || reg.size(1) != N)
    throw RangeError("regressions " + describeShape(reg.sizes()) + " do not match classifications " + describeShape(cls.sizes()));
  if (anchors.size(0) != N)
    throw RangeError("anchors: " + std::to_string(anchors.size(0)) + " anchors but the outputs have " + std::to_string(N));
  if (annotations.size(0) != B)
    throw RangeError("annotations: " + std::to_string(annotations.size(0)) + " images but the outputs have " + std::to_string(B));
  for (const auto* t : {&reg, &anchors, &annotations})
    if (t->device() != cls.device()) throw TypeError("classifications, regressions, anchors and annotations must be on one device");
}

namespace {

/// Per-element focal terms [B, N, C] (0 for ignored anchors), CPU.
torch::Tensor focalTermCpu(const torch::Tensor& xIn, const torch::Tensor& labelsIn, const FocalTerm& f) {
  const auto x = xIn.contiguous();
  const auto labels = labelsIn.contiguous();
  auto out = torch::empty_like(x);
  const int64_t rows = labels.numel(), C = x.size(2);
  const float* xp = x.data_ptr<float>();
  const int64_t* lp = labels.data_ptr<int64_t>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, rows, 256, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t label = lp[r];
      for (int64_t c = 0; c < C; ++c)
        op[r * C + c] = label == -2 ? 0.f : f.value(xp[r * C + c], label == c);
    }
  });
  return out;
}

torch::Tensor focalGradCpu(const torch::Tensor& xIn, const torch::Tensor& labelsIn, const torch::Tensor& scaleIn, const FocalTerm& f) {
  const auto x = xIn.contiguous();
  const auto labels = labelsIn.contiguous();
  const auto scale = scaleIn.to(torch::kFloat32).contiguous();
  auto grad = torch::empty_like(x);
  const int64_t N = labels.size(1), rows = labels.numel(), C = x.size(2);
  const float* xp = x.data_ptr<float>();
  const int64_t* lp = labels.data_ptr<int64_t>();
  const float* sp = scale.data_ptr<float>();
  float* gp = grad.data_ptr<float>();
  at::parallel_for(0, rows, 256, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t label = lp[r];
      const float s = sp[r / N];
      for (int64_t c = 0; c < C; ++c)
        gp[r * C + c] = label == -2 ? 0.f : s * f.derivative(xp[r * C + c], label == c);
    }
  });
  return grad;
}

class FusedRetinaFocal : public torch::autograd::Function<FusedRetinaFocal> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& labels,
                               const torch::Tensor& scale, double alpha, double gamma, bool probabilities) {
    const FocalTerm f{static_cast<float>(alpha), static_cast<float>(gamma), probabilities};
    ctx->save_for_backward({x, labels, scale});
    ctx->saved_data["alpha"] = alpha;
    ctx->saved_data["gamma"] = gamma;
    ctx->saved_data["probabilities"] = probabilities;
    torch::Tensor terms;
#ifdef ONESTAGE_WITH_CUDA
    if (x.is_cuda()) terms = focalTermCuda(x, labels, alpha, gamma, probabilities);
#endif
    if (!terms.defined()) terms = focalTermCpu(x, labels, f);
    return (terms.sum({1, 2}) * scale).sum();
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const double alpha = ctx->saved_data["alpha"].toDouble();
    const double gamma = ctx->saved_data["gamma"].toDouble();
    const bool probabilities = ctx->saved_data["probabilities"].toBool();
    const auto scale = saved[2] * grads[0];  // [B]
    torch::Tensor g;
#ifdef ONESTAGE_WITH_CUDA
    if (saved[0].is_cuda()) g = focalGradCuda(saved[0], saved[1], scale, alpha, gamma, probabilities);
#endif
    if (!g.defined()) g = focalGradCpu(saved[0], saved[1], scale, FocalTerm{static_cast<float>(alpha), static_cast<float>(gamma), probabilities});
    return {g, torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor fusedRetinaFocal(const torch::Tensor& logits, const torch::Tensor& labels, const torch::Tensor& scale, double alpha,
                               double gamma, bool probabilities) {
  return FusedRetinaFocal::apply(logits, labels, scale, alpha, gamma, probabilities);
}

torch::Tensor oneHotTargets(const torch::Tensor& labels, int64_t C, torch::ScalarType dtype) {
  const auto positive = labels >= 0;
  auto t = torch::zeros({labels.size(0), labels.size(1), C}, labels.options().dtype(dtype));
  return t.scatter(2, labels.clamp_min(0).unsqueeze(-1), positive.unsqueeze(-1).to(dtype));
}

torch::Tensor sigmoidFocalLoss(const torch::Tensor& x, const torch::Tensor& t, double alpha, double gamma) {
  const auto p = torch::sigmoid(x);
  const auto ce = torch::binary_cross_entropy_with_logits(x, t, {}, {}, at::Reduction::None);
  const auto pt = p * t + (1 - p) * (1 - t);
  auto loss = ce * (1 - pt).pow(gamma);
  if (alpha >= 0) loss = (alpha * t + (1 - alpha) * (1 - t)) * loss;
  return loss;
}

RegressionSums regressionSums(const std::string& type, const torch::Tensor& reg, const torch::Tensor& anchors,
                              const Assignment& a, const BoxCoder& coder, double beta) {
  const auto positive = (a.labels >= 0).unsqueeze(-1).to(reg.scalar_type());  // [B, N, 1]
  const auto npos = a.numPositives.to(reg.scalar_type());
  if (type == "none") return {torch::zeros({reg.size(0)}, reg.options()), npos};
  const auto anc = anchors.to(reg.scalar_type()).unsqueeze(0);
  if (type == "giou") {
    const auto per = giouLoss(coder.decode(anc, reg), a.boxes.to(reg.scalar_type())) * positive.squeeze(-1);
    return {per.sum(1), npos};
  }
  // non-positive anchors are assigned their own box, so targets are finite everywhere
  const auto targets = coder.encode(anc, a.boxes.to(reg.scalar_type())).detach();
  const auto diff = torch::abs(targets - reg);
  torch::Tensor per;
  if (type == "smoothL1") per = smoothL1(diff, beta);
  else if (type == "l1") per = diff;
  else throw RangeError("Expected one of smoothL1, l1, giou, none for regression but received '" + type + "'");
  return {(per * positive).sum({1, 2}), 4 * npos};
}

namespace {
void checkVariant(const FocalLossOptions& opts) {
  if (opts.variant != "retinanet" && opts.variant != "logits")
    throw RangeError("Expected 'retinanet' or 'logits' for variant but received '" + opts.variant + "'");
  if (opts.variant == "logits" && opts.normalize != "image" && opts.normalize != "batch")
    throw RangeError("Expected 'image' or 'batch' for normalize but received '" + opts.normalize + "'");
}
}  // namespace

torch::Tensor focalClassification(const torch::Tensor& cls, const Assignment& a, const FocalLossOptions& opts) {
  checkVariant(opts);
  const auto dtype = cls.scalar_type();
  const auto npos = a.numPositives.to(dtype);
  if (opts.variant == "retinanet" && dtype == torch::kFloat32) {
    // fused: one pass forward, one backward (the same terms as below, without ~40 temporaries)
    const auto scale = 1.0 / (npos.clamp_min(1.0) * static_cast<double>(cls.size(0)));
    return fusedRetinaFocal(cls, a.labels, scale, opts.alpha, opts.gamma, opts.probabilities);
  }
  const auto t = oneHotTargets(a.labels, cls.size(2), dtype);
  const auto valid = (a.labels != -2).unsqueeze(-1).to(dtype);  // ignored anchors contribute nothing
  if (opts.variant == "retinanet") {
    auto p = opts.probabilities ? cls : torch::sigmoid(cls);
    p = torch::clamp(p, 1e-4, 1.0 - 1e-4);
    const auto isPos = t == 1;
    const auto alphaFactor = torch::where(isPos, torch::full_like(p, opts.alpha), torch::full_like(p, 1.0 - opts.alpha));
    const auto focalWeight = alphaFactor * torch::pow(torch::where(isPos, 1.0 - p, p), opts.gamma);
    const auto bce = -(t * torch::log(p) + (1.0 - t) * torch::log(1.0 - p));
    return ((focalWeight * bce * valid).sum({1, 2}) / npos.clamp_min(1.0)).mean();
  }
  const auto loss = sigmoidFocalLoss(cls, t, opts.alpha, opts.gamma) * valid;
  if (opts.normalize == "image") return (loss.sum({1, 2}) / npos.clamp_min(1.0)).mean();
  return loss.sum() / npos.sum().clamp_min(1.0);
}

torch::Tensor focalRegression(const torch::Tensor& reg, const torch::Tensor& anchors, const Assignment& a,
                              const FocalLossOptions& opts) {
  checkVariant(opts);
  const auto r = regressionSums(opts.regression, reg, anchors, a, opts.coder, opts.beta);
  if (opts.variant == "retinanet") return (r.sum / r.count.clamp_min(1.0)).mean();  // mean over 4·positives
  const auto npos = a.numPositives.to(reg.scalar_type());
  if (opts.normalize == "image") return (r.sum / npos.clamp_min(1.0)).mean();
  return r.sum.sum() / npos.sum().clamp_min(1.0);
}

LossParts focalLoss(const torch::Tensor& cls, const torch::Tensor& reg, const torch::Tensor& anchors, const Assignment& a,
                    const FocalLossOptions& opts) {
  return {focalClassification(cls, a, opts), focalRegression(reg, anchors, a, opts)};
}

LossParts focalLoss(const torch::Tensor& cls, const torch::Tensor& reg, const torch::Tensor& anchors,
                    const torch::Tensor& annotations, const FocalLossOptions& opts) {
  checkDetectionLossInputs(cls, reg, anchors, annotations);
  const auto a = assignMaxIou(anchors, annotations, opts.assigner);
  return focalLoss(cls, reg, anchors, a, opts);
}

}  // namespace onestage
