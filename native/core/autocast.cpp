#include "core/autocast.h"

#include <cstdlib>
#include <cstring>
#include <string>

#include "core/errors.h"

namespace onestage {
namespace {

namespace ag = torch::autograd;

/// Copies of `src` (each with its own strides: channels-last stays channels-last) in `dtype`, made by one
/// multi-tensor copy where LibTorch has it (same sizes and strides per pair, one source type).
std::vector<torch::Tensor> castAll(const std::vector<torch::Tensor>& src, at::ScalarType dtype) {
  std::vector<torch::Tensor> dst;
  dst.reserve(src.size());
  for (const auto& s : src) dst.push_back(at::empty_like(s, s.options().dtype(dtype)));
  if (dst.empty()) return dst;
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 1)
  at::_foreach_copy_(dst, src);
#else
  for (size_t i = 0; i < src.size(); ++i) dst[i].copy_(src[i]);
#endif
  return dst;
}

/// weights (one type) → their copies in `dtype`; backward: the copies' gradients cast back to the
/// weights' type, undefined ones left undefined (a weight no forward used gets no gradient, as without
/// copies).
struct CastWeights : ag::Function<CastWeights> {
  // a TensorList: autograd makes an input of each tensor (a std::vector would be one opaque argument)
  static ag::variable_list forward(ag::AutogradContext* ctx, at::TensorList weights, at::ScalarType dtype) {
    ctx->set_materialize_grads(false);
    ctx->saved_data["type"] = static_cast<int64_t>(weights.front().scalar_type());
    return castAll(weights.vec(), dtype);
  }

  static ag::variable_list backward(ag::AutogradContext* ctx, ag::variable_list grads) {
    const auto type = static_cast<at::ScalarType>(ctx->saved_data["type"].toInt());
    std::vector<torch::Tensor> defined;
    std::vector<size_t> where;
    for (size_t i = 0; i < grads.size(); ++i)
      if (grads[i].defined()) {
        defined.push_back(grads[i]);
        where.push_back(i);
      }
    const auto cast = castAll(defined, type);
    ag::variable_list out(grads.size() + 1);  // the last: dtype's (no gradient)
    for (size_t k = 0; k < where.size(); ++k) out[where[k]] = cast[k];
    return out;
  }
};

}  // namespace

ConvWeightCopies::ConvWeightCopies(torch::nn::Module& module, std::optional<at::ScalarType> dtype) {
  if (!dtype) return;
  std::vector<torch::nn::Conv2dImpl*> trained, frozen;
  std::vector<torch::Tensor> trainedWeights, frozenWeights;
  for (const auto& m : module.modules(/*include_self=*/true)) {
    auto* conv = m->as<torch::nn::Conv2dImpl>();
    // the models' weights are float32 (one source type per multi-tensor copy)
    if (!conv || !conv->weight.defined() || conv->weight.scalar_type() != at::kFloat) continue;
    const bool grad = conv->weight.requires_grad() && torch::GradMode::is_enabled();
    (grad ? trained : frozen).push_back(conv);
    (grad ? trainedWeights : frozenWeights).push_back(conv->weight);
  }
  std::vector<torch::Tensor> trainedCopies, frozenCopies;
  if (!trainedWeights.empty()) trainedCopies = CastWeights::apply(at::TensorList(trainedWeights), *dtype);
  if (!frozenWeights.empty()) {
    torch::NoGradGuard noGrad;
    frozenCopies = castAll(frozenWeights, *dtype);
  }
  saved_.reserve(trained.size() + frozen.size());
  const auto swap = [this](const std::vector<torch::nn::Conv2dImpl*>& convs, std::vector<torch::Tensor>& copies) {
    for (size_t i = 0; i < convs.size(); ++i) {
      saved_.emplace_back(convs[i], convs[i]->weight);
      convs[i]->weight = std::move(copies[i]);
    }
  };
  swap(trained, trainedCopies);
  swap(frozen, frozenCopies);
}

ConvWeightCopies::~ConvWeightCopies() {
  for (auto& [conv, weight] : saved_) conv->weight = std::move(weight);
}

std::optional<at::ScalarType> ConvWeightCopies::forForward(bool amp, const torch::Device& device, Purpose purpose) {
  if (purpose == Purpose::dataParallelStep) return std::nullopt;
  if (const char* test = std::getenv("ONESTAGE_TEST_WEIGHT_COPIES"); test && *test) {
    std::string v(test);
    const std::string trainOnly = ":train";
    const bool training = v.size() > trainOnly.size() && v.compare(v.size() - trainOnly.size(), trainOnly.size(), trainOnly) == 0;
    if (training) v.resize(v.size() - trainOnly.size());
    if (v != "float32" && v != "float64")
      throw RangeError("ONESTAGE_TEST_WEIGHT_COPIES must be float32 or float64 (optionally with :train), not '" + std::string(test) + "'");
    if (training && purpose != Purpose::trainingStep) return std::nullopt;
    return v == "float32" ? at::kFloat : at::kDouble;
  }
  if (!amp || !device.is_cuda()) return std::nullopt;
  const char* mode = std::getenv("ONESTAGE_BF16_WEIGHTS");
  if (mode && std::strcmp(mode, "autocast") == 0) return std::nullopt;
  return at::kBFloat16;
}

}  // namespace onestage
