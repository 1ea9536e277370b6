#include "core/losses/contrastive.h"

#include <cmath>
#include <limits>

#include "core/errors.h"
#include "core/roi_align.h"

namespace onestage {

namespace {

/// Each image's background cell: [B, 4] boxes (x1, y1, x2, y2) of the grid cell whose largest
/// intersection with any box (as a fraction of the cell) is smallest; first in row-major order on ties.
torch::Tensor backgroundBoxes(const torch::Tensor& annotations, int64_t height, int64_t width, int64_t grid) {
  const auto f64 = annotations.options().dtype(torch::kFloat64);
  const auto k = torch::arange(grid * grid, f64.dtype(torch::kLong));
  const auto row = (k / grid).to(torch::kFloat64), col = (k % grid).to(torch::kFloat64);
  const double cw = static_cast<double>(width) / grid, ch = static_cast<double>(height) / grid;
  const auto cells = torch::stack({col * cw, row * ch, (col + 1) * cw, (row + 1) * ch}, 1);  // [K, 4]
  const auto ann = annotations.to(torch::kFloat64);
  const auto boxes = ann.slice(2, 0, 4);                                // [B, M, 4]
  const auto present = ann.select(2, 4) != -1;                          // boxes and ignore regions
  const auto c = cells.view({1, -1, 1, 4});
  const auto b = boxes.unsqueeze(1);                                    // [B, 1, M, 4]
  const auto iw = (torch::min(c.select(3, 2), b.select(3, 2)) - torch::max(c.select(3, 0), b.select(3, 0))).clamp_min(0);
  const auto ih = (torch::min(c.select(3, 3), b.select(3, 3)) - torch::max(c.select(3, 1), b.select(3, 1))).clamp_min(0);
  const auto iof = (iw * ih / (cw * ch)) * present.unsqueeze(1).to(torch::kFloat64);  // [B, K, M]
  const auto cover = iof.size(2) > 0 ? std::get<0>(iof.max(2)) : torch::zeros({ann.size(0), grid * grid}, f64);  // [B, K]
  const auto least = std::get<0>(cover.min(1, true));                  // [B, 1]
  const auto order = k.unsqueeze(0).expand_as(cover);
  const auto first = torch::where(cover == least, order, torch::full_like(order, grid * grid)).amin(1);  // [B]
  return cells.index_select(0, first);
}

torch::Tensor pool(const torch::Tensor& pooled, const std::string& mode, const Projection& project) {
  auto flat = mode == "flatten" ? pooled.flatten(1) : pooled.mean({2, 3});
  if (project) flat = project(flat);
  return torch::nn::functional::normalize(flat, torch::nn::functional::NormalizeFuncOptions().dim(1));
}

}  // namespace

ContrastiveParts contrastiveLoss(const std::vector<torch::Tensor>& f1, const std::vector<torch::Tensor>& f2,
                                 const torch::Tensor& annotations, int64_t inputHeight, int64_t inputWidth,
                                 const ContrastiveLossOptions& o, const Projection& project) {
  const auto L = static_cast<int64_t>(f1.size());
  if (L == 0 || f2.size() != f1.size()) throw RangeError("contrastiveLoss: both views need the same non-empty list of feature maps");
  for (int64_t l = 0; l < L; ++l)
    if (f1[l].dim() != 4 || f1[l].sizes() != f2[l].sizes() || f1[l].size(0) != f1[0].size(0))
      throw RangeError("contrastiveLoss: feature maps must be [B, C, H, W], equal between the views, with one batch size");
  if (annotations.dim() != 3 || annotations.size(2) != 5 || annotations.size(0) != f1[0].size(0))
    throw RangeError("contrastiveLoss: annotations must be [B, M, 5] with the features' batch size");
  if (!(o.temperature > 0)) throw RangeError("contrastiveLoss: temperature must be positive");
  if (o.levels != "all" && o.levels != "assigned") throw RangeError("contrastiveLoss: levels must be 'all' or 'assigned'");
  if (o.negatives != "other-class" && o.negatives != "all-other" && o.negatives != "same-region-other-images")
    throw RangeError("contrastiveLoss: negatives must be 'other-class', 'all-other' or 'same-region-other-images'");
  if (o.pooling != "average" && o.pooling != "flatten") throw RangeError("contrastiveLoss: pooling must be 'average' or 'flatten'");
  if (!o.strides.empty() && static_cast<int64_t>(o.strides.size()) != L) throw RangeError("contrastiveLoss: one stride per feature map");
  const auto device = f1[0].device();
  const auto ann = annotations.to(device, torch::kFloat32);
  const int64_t B = ann.size(0);

  // the real boxes: image, annotation row, box, class
  const auto real = (ann.select(2, 4) >= 0).nonzero();  // [G, 2]
  const int64_t G = real.size(0);
  ContrastiveParts out;
  if (G == 0) {
    auto zero = f1[0].sum() * 0.0 + f2[0].sum() * 0.0;
    for (int64_t l = 1; l < L; ++l) zero = zero + f1[l].sum() * 0.0 + f2[l].sum() * 0.0;
    out.loss = zero;
    return out;
  }
  const auto image = real.select(1, 0), slot = real.select(1, 1);
  const auto rows = ann.index({image, slot});                 // [G, 5]
  const auto boxes = rows.slice(1, 0, 4);
  const auto cls = rows.select(1, 4).to(torch::kLong);
  // the level of each box ('assigned'), else every level
  torch::Tensor boxLevel;
  if (o.levels == "assigned") {
    const auto side = ((boxes.select(1, 2) - boxes.select(1, 0)) * (boxes.select(1, 3) - boxes.select(1, 1))).clamp_min(1e-12).to(torch::kFloat64).sqrt();
    boxLevel = (torch::floor(4.0 + torch::log2(side / 224.0)) - static_cast<double>(o.firstLevel)).clamp(0, L - 1).to(torch::kLong);
  }
  const auto background = backgroundBoxes(ann, inputHeight, inputWidth, o.backgroundGrid).to(torch::kFloat32);  // [B, 4]
  const auto bgRois = torch::cat({torch::arange(B, ann.options()).unsqueeze(1), background}, 1);

  std::vector<torch::Tensor> emb, bgEmb, rowLevel, rowGt, rowView, bgLevel, bgImage, bgView;
  std::vector<int64_t> positive;  // filled per level below
  int64_t offset = 0;
  const auto longOpts = torch::TensorOptions().dtype(torch::kLong).device(device);
  for (int64_t l = 0; l < L; ++l) {
    const auto gts = o.levels == "assigned" ? (boxLevel == l).nonzero().squeeze(1) : torch::arange(G, longOpts);
    const int64_t Gl = gts.size(0);
    const double stride = o.strides.empty() ? std::pow(2.0, static_cast<double>(o.firstLevel + l)) : o.strides[l];
    RoiAlignOptions ro;
    ro.outputHeight = ro.outputWidth = o.outputSize;
    ro.spatialScale = 1.0 / stride;
    ro.samplingRatio = o.samplingRatio;
    ro.aligned = true;
    const auto rois = torch::cat({torch::cat({image.index_select(0, gts).to(torch::kFloat32).unsqueeze(1), boxes.index_select(0, gts)}, 1), bgRois}, 0);
    for (int v = 0; v < 2; ++v) {
      const auto e = pool(roiAlign(v == 0 ? f1[l] : f2[l], rois, ro), o.pooling, project);  // [Gl + B, D]
      emb.push_back(e.slice(0, 0, Gl));
      bgEmb.push_back(e.slice(0, Gl));
      rowLevel.push_back(torch::full({Gl}, l, longOpts));
      rowGt.push_back(gts);
      rowView.push_back(torch::full({Gl}, v, longOpts));
      bgLevel.push_back(torch::full({B}, l, longOpts));
      bgImage.push_back(torch::arange(B, longOpts));
      bgView.push_back(torch::full({B}, v, longOpts));
    }
    for (int v = 0; v < 2; ++v)
      for (int64_t j = 0; j < Gl; ++j) positive.push_back(offset + (1 - v) * Gl + j);
    offset += 2 * Gl;
  }
  const auto E = torch::cat(emb, 0);   // [N, D]
  const auto Bg = torch::cat(bgEmb, 0);  // [2·B·L, D]
  const int64_t N = E.size(0);
  out.embeddings = N;
  if (N == 0) {
    out.loss = E.sum() * 0.0 + Bg.sum() * 0.0;
    return out;
  }
  const auto level = torch::cat(rowLevel), gt = torch::cat(rowGt);
  const auto rImage = image.index_select(0, gt), rSlot = slot.index_select(0, gt), rClass = cls.index_select(0, gt);
  const auto sameLevel = level.unsqueeze(1) == level.unsqueeze(0);
  torch::Tensor negative;
  if (o.negatives == "other-class")
    negative = rClass.unsqueeze(1) != rClass.unsqueeze(0);
  else if (o.negatives == "all-other")
    negative = gt.unsqueeze(1) != gt.unsqueeze(0);
  else
    negative = (rImage.unsqueeze(1) != rImage.unsqueeze(0)) & (rSlot.unsqueeze(1) == rSlot.unsqueeze(0));
  negative = negative & sameLevel;
  const auto hasNegative = negative.any(1);
  const auto bgL = torch::cat(bgLevel), bgI = torch::cat(bgImage);
  const auto useBg = (level.unsqueeze(1) == bgL.unsqueeze(0)) & (rImage.unsqueeze(1) == bgI.unsqueeze(0)) & hasNegative.logical_not().unsqueeze(1);
  out.withBackground = (~hasNegative).sum();
  const double invT = 1.0 / o.temperature;
  const auto S = E.matmul(E.t()) * invT;
  const auto posIndex = torch::tensor(positive, longOpts).unsqueeze(1);
  const auto pos = S.gather(1, posIndex);  // [N, 1]
  const double negInf = -std::numeric_limits<double>::infinity();
  const auto negS = S.masked_fill(negative.logical_not(), negInf);
  const auto bgS = E.matmul(Bg.t()).mul(invT).masked_fill(useBg.logical_not(), negInf);
  const auto lse = torch::logsumexp(torch::cat({pos, negS, bgS}, 1), 1, true);
  out.loss = (lse - pos).mean();
  return out;
}

}  // namespace onestage
