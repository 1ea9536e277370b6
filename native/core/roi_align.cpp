#include "core/roi_align.h"

#include "core/errors.h"

#include <cstdlib>

namespace onestage {

#ifdef ONESTAGE_WITH_CUDA
namespace {
/// ONESTAGE_ROI_ALIGN=gather: the LibTorch-ops path on CUDA too (to compare the two).
bool forceGatherRoiAlign() {
  static const bool force = [] {
    const char* v = std::getenv("ONESTAGE_ROI_ALIGN");
    return v != nullptr && std::string(v) == "gather";
  }();
  return force;
}
}  // namespace

/// mean: the output is the mean over the bins, [maps, R, C] (else [maps, R, C, PH, PW]).
at::Tensor roiAlignForwardCuda(at::TensorList maps, const at::Tensor& rois, const std::vector<double>& scales, int64_t PH, int64_t PW, int64_t S,
                               bool aligned, bool mean);
/// The maps' gradients (dense channels-last views of one buffer, in the maps' dtype).
std::vector<at::Tensor> roiAlignBackwardCuda(const at::Tensor& grad, const at::Tensor& rois, const std::vector<int64_t>& shapes,
                                             const at::TensorOptions& mapOptions, const std::vector<double>& scales, int64_t PH, int64_t PW, int64_t S,
                                             bool aligned, bool mean);

namespace {

/// The fused CUDA kernels with autograd (gradients with respect to the maps only).
struct RoiAlignFunction : public torch::autograd::Function<RoiAlignFunction> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, at::TensorList maps, const torch::Tensor& rois, std::vector<double> scales,
                               int64_t PH, int64_t PW, int64_t S, bool aligned, bool mean) {
    auto out = roiAlignForwardCuda(maps, rois, scales, PH, PW, S, aligned, mean);
    std::vector<int64_t> shapes;  // the maps' sizes, for the gradients (the maps themselves are not kept)
    for (const auto& m : maps) shapes.insert(shapes.end(), m.sizes().begin(), m.sizes().end());
    ctx->save_for_backward({rois});
    ctx->saved_data["scales"] = c10::List<double>(scales);
    ctx->saved_data["shapes"] = c10::List<int64_t>(shapes);
    ctx->saved_data["like"] = at::empty({0}, maps[0].options());
    ctx->saved_data["PH"] = PH;
    ctx->saved_data["PW"] = PW;
    ctx->saved_data["S"] = S;
    ctx->saved_data["aligned"] = aligned;
    ctx->saved_data["mean"] = mean;
    return out;
  }
  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::tensor_list grads) {
    const auto rois = ctx->get_saved_variables()[0];
    const auto scalesList = ctx->saved_data["scales"].toDoubleList();
    const auto shapesList = ctx->saved_data["shapes"].toIntList();
    auto g = roiAlignBackwardCuda(grads[0], rois, std::vector<int64_t>(shapesList.begin(), shapesList.end()),
                                  ctx->saved_data["like"].toTensor().options(), std::vector<double>(scalesList.begin(), scalesList.end()),
                                  ctx->saved_data["PH"].toInt(), ctx->saved_data["PW"].toInt(), ctx->saved_data["S"].toInt(),
                                  ctx->saved_data["aligned"].toBool(), ctx->saved_data["mean"].toBool());
    for (int i = 0; i < 7; ++i) g.emplace_back();  // rois, scales, PH, PW, S, aligned, mean
    return g;
  }
};

bool fusedRoiAlign(const std::vector<torch::Tensor>& maps, const torch::Tensor& rois) {
  if (forceGatherRoiAlign() || maps.empty() || static_cast<int64_t>(maps.size()) > kRoiAlignMaxMaps) return false;
  for (const auto& m : maps) {
    const auto t = m.scalar_type();
    if (!m.is_cuda() || m.device() != rois.device() || (t != torch::kFloat32 && t != torch::kFloat16 && t != torch::kBFloat16)) return false;
  }
  return true;
}

}  // namespace
#endif

namespace {

void checkRoiArgs(const torch::Tensor& rois, const RoiAlignOptions& o) {
  if (rois.dim() != 2 || rois.size(1) != 5) throw RangeError("roiAlign: rois must be [R, 5] (batch index, x1, y1, x2, y2)");
  if (o.outputHeight < 1 || o.outputWidth < 1 || o.samplingRatio < 1) throw RangeError("roiAlign: output size and sampling ratio must be ≥ 1");
}

/// LibTorch-ops RoIAlign of one map (any device).
torch::Tensor roiAlignGather(const torch::Tensor& features, const torch::Tensor& rois, const RoiAlignOptions& o);

}  // namespace

namespace {

/// roiAlignMany's checks; the pooled output [maps, R, C, PH, PW], or its mean over the bins.
torch::Tensor roiAlignManyImpl(const std::vector<torch::Tensor>& maps, const torch::Tensor& rois, const std::vector<double>& scales,
                               const RoiAlignOptions& o, bool mean) {
  checkRoiArgs(rois, o);
  if (maps.empty() || scales.size() != maps.size()) throw RangeError("roiAlignMany: one scale per map, at least one map");
  for (const auto& m : maps)
    if (m.dim() != 4 || m.size(0) != maps[0].size(0) || m.size(1) != maps[0].size(1) || m.scalar_type() != maps[0].scalar_type() ||
        m.device() != maps[0].device())
      throw RangeError("roiAlignMany: maps must be [B, C, H, W] with one B, C, dtype and device");
  const int64_t R = rois.size(0), C = maps[0].size(1);
  if (R == 0) {
    const auto empty = torch::zeros({static_cast<int64_t>(maps.size()), 0, C, o.outputHeight, o.outputWidth}, maps[0].options().dtype(torch::kFloat32));
    return mean ? empty.mean({3, 4}) : empty;
  }
#ifdef ONESTAGE_WITH_CUDA
  if (fusedRoiAlign(maps, rois))
    return RoiAlignFunction::apply(at::TensorList(maps), rois.detach().to(torch::kFloat32).contiguous(), scales, o.outputHeight, o.outputWidth,
                                   o.samplingRatio, o.aligned, mean);
#endif
  std::vector<torch::Tensor> out;
  for (size_t m = 0; m < maps.size(); ++m) {
    RoiAlignOptions one = o;
    one.spatialScale = scales[m];
    out.push_back(roiAlignGather(maps[m], rois, one));
  }
  const auto pooled = torch::stack(out).to(torch::kFloat32);
  return mean ? pooled.mean({3, 4}) : pooled;
}

}  // namespace

torch::Tensor roiAlignMany(const std::vector<torch::Tensor>& maps, const torch::Tensor& rois, const std::vector<double>& scales,
                           const RoiAlignOptions& o) {
  return roiAlignManyImpl(maps, rois, scales, o, false);
}

torch::Tensor roiAlignManyMean(const std::vector<torch::Tensor>& maps, const torch::Tensor& rois, const std::vector<double>& scales,
                               const RoiAlignOptions& o) {
  return roiAlignManyImpl(maps, rois, scales, o, true);
}

torch::Tensor roiAlign(const torch::Tensor& features, const torch::Tensor& rois, const RoiAlignOptions& o) {
  if (features.dim() != 4) throw RangeError("roiAlign: features must be [B, C, H, W]");
  checkRoiArgs(rois, o);
  if (rois.size(0) == 0) return features.new_zeros({0, features.size(1), o.outputHeight, o.outputWidth});
#ifdef ONESTAGE_WITH_CUDA
  if (fusedRoiAlign({features}, rois)) return roiAlignMany({features}, rois, {o.spatialScale}, o).select(0, 0).to(features.scalar_type()).contiguous();
#endif
  return roiAlignGather(features, rois, o);
}

namespace {

torch::Tensor roiAlignGather(const torch::Tensor& features, const torch::Tensor& rois, const RoiAlignOptions& o) {
  const int64_t B = features.size(0), C = features.size(1), H = features.size(2), W = features.size(3);
  const int64_t R = rois.size(0), PH = o.outputHeight, PW = o.outputWidth, S = o.samplingRatio;
  const auto opts = features.options();
  const auto r = rois.to(opts.dtype(torch::kFloat64)).detach();
  const double offset = o.aligned ? 0.5 : 0.0;
  auto startX = r.select(1, 1) * o.spatialScale - offset;
  auto startY = r.select(1, 2) * o.spatialScale - offset;
  auto roiW = r.select(1, 3) * o.spatialScale - offset - startX;
  auto roiH = r.select(1, 4) * o.spatialScale - offset - startY;
  if (!o.aligned) {
    roiW = roiW.clamp_min(1.0);
    roiH = roiH.clamp_min(1.0);
  }
  const auto binW = roiW / static_cast<double>(PW);
  const auto binH = roiH / static_cast<double>(PH);
  const auto f64 = opts.dtype(torch::kFloat64);
  // sample offsets within the RoI in units of bins: p + (i + 0.5) / S for p < P, i < S
  const auto along = [&](int64_t P) {
    auto p = torch::arange(P, f64).unsqueeze(1);
    auto i = torch::arange(S, f64).unsqueeze(0);
    return (p + (i + 0.5) / static_cast<double>(S)).reshape({P * S});  // [P·S]
  };
  auto y = startY.unsqueeze(1) + binH.unsqueeze(1) * along(PH).unsqueeze(0);  // [R, PH·S]
  auto x = startX.unsqueeze(1) + binW.unsqueeze(1) * along(PW).unsqueeze(0);  // [R, PW·S]
  // torchvision's bilinear_interpolate, per axis
  struct Axis {
    torch::Tensor low, high, wLow, wHigh, valid;
  };
  const auto axis = [](torch::Tensor v, int64_t size) {
    Axis a;
    a.valid = (v >= -1.0) & (v <= static_cast<double>(size));
    v = v.clamp_min(0.0);
    auto low = v.floor().to(torch::kLong);
    const auto atEdge = low >= size - 1;
    low = torch::where(atEdge, torch::full_like(low, size - 1), low);
    v = torch::where(atEdge, low.to(v.scalar_type()), v);
    a.low = low;
    a.high = torch::where(atEdge, low, low + 1);
    a.wHigh = v - low.to(v.scalar_type());
    a.wLow = 1.0 - a.wHigh;
    return a;
  };
  const Axis ay = axis(y, H), ax = axis(x, W);
  // every (row sample, column sample) pair: [R, PH·S, PW·S]
  const auto b = r.select(1, 0).to(torch::kLong).clamp(0, B - 1).view({R, 1, 1});
  const auto rowBase = b * (H * W);
  const auto valid = (ay.valid.unsqueeze(2) & ax.valid.unsqueeze(1)).to(opts.dtype());
  const auto flat = features.permute({0, 2, 3, 1}).reshape({B * H * W, C});
  torch::Tensor sum;
  for (int corner = 0; corner < 4; ++corner) {
    const auto& yi = corner < 2 ? ay.low : ay.high;
    const auto& wy = corner < 2 ? ay.wLow : ay.wHigh;
    const auto& xi = corner % 2 == 0 ? ax.low : ax.high;
    const auto& wx = corner % 2 == 0 ? ax.wLow : ax.wHigh;
    const auto index = (rowBase + yi.unsqueeze(2) * W + xi.unsqueeze(1)).reshape({-1});
    const auto weight = (wy.unsqueeze(2) * wx.unsqueeze(1)).to(opts.dtype()) * valid;  // [R, PH·S, PW·S]
    const auto term = flat.index_select(0, index).view({R, PH * S, PW * S, C}) * weight.unsqueeze(3);
    sum = corner == 0 ? term : sum + term;
  }
  // mean over the S×S samples of each bin → [R, C, PH, PW]
  return sum.view({R, PH, S, PW, S, C}).mean({2, 4}).permute({0, 3, 1, 2}).contiguous();
}

}  // namespace

}  // namespace onestage
