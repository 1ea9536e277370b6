#include "core/losses/contrastive.h"

#include <cmath>
#include <cstdlib>
#include <limits>

#include "core/errors.h"
#include "core/roi_align.h"

namespace onestage {

#ifdef ONESTAGE_WITH_CUDA
// contrastive_cuda.cu
std::pair<at::Tensor, at::Tensor> contrastivePrepareCuda(const at::Tensor& ann, const at::Tensor& cells, int64_t L, bool assigned, int64_t firstLevel,
                                                         double cellArea);
std::pair<at::Tensor, at::Tensor> contrastiveNormalizeCuda(const at::Tensor& x);
at::Tensor contrastiveNormalizeBackwardCuda(const at::Tensor& de, const at::Tensor& e, const at::Tensor& norm);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> contrastiveRowsCuda(const at::Tensor& S, const at::Tensor& onLevel, const at::Tensor& ann,
                                                                               int64_t mode, double temperature);
at::Tensor contrastiveSymmetricCuda(const at::Tensor& W, const at::Tensor& upstream, const at::Tensor& invCount, double temperature);
#endif

namespace {

/// Tensors that depend only on the shapes (B images, M annotation rows, the input size, the grid),
/// built once per shape and thread instead of a dozen small kernels per call.
struct ShapeIndex {
  int64_t B = -1, M = -1, height = -1, width = -1, grid = -1;
  torch::Device device{torch::kCPU};
  torch::Tensor k, image, slot;  // [BM] long: row k = image · M + slot
  torch::Tensor roiImage;        // [BM + B, 1] float: the batch index of each RoI (boxes, then backgrounds)
  torch::Tensor cells, cellOrder;  // [K, 4] float64 grid cells (x1, y1, x2, y2), [1, K] long
  torch::Tensor other;           // [1, 2BM, 1] long: the same row in the other view
  torch::Tensor sameImageBg;     // [2BM, 2B] bool: row's image == background's image
  torch::Tensor allOther, sameRegion;  // [BM, BM] the shape-only negative rules

  static const ShapeIndex& get(int64_t B, int64_t M, int64_t height, int64_t width, int64_t grid, const torch::Device& device) {
    thread_local ShapeIndex* s = new ShapeIndex();  // never destroyed: no device tensors freed during process teardown
    if (s->B != B || s->M != M || s->height != height || s->width != width || s->grid != grid || s->device != device)
      *s = ShapeIndex(B, M, height, width, grid, device);
    return *s;
  }

 private:
  ShapeIndex() = default;
  ShapeIndex(int64_t B_, int64_t M_, int64_t h, int64_t w, int64_t g, const torch::Device& d) : B(B_), M(M_), height(h), width(w), grid(g), device(d) {
    const auto longs = torch::TensorOptions().dtype(torch::kLong).device(d);
    const int64_t BM = B * M;
    k = torch::arange(BM, longs);
    image = k.div(M, "floor");
    slot = k.remainder(M);
    roiImage = torch::cat({image, torch::arange(B, longs)}).to(torch::kFloat32).unsqueeze(1);
    const auto c = torch::arange(g * g, longs);
    const auto row = c.div(g, "floor").to(torch::kFloat64), col = c.remainder(g).to(torch::kFloat64);
    const double cw = static_cast<double>(w) / g, ch = static_cast<double>(h) / g;
    cells = torch::stack({col * cw, row * ch, (col + 1) * cw, (row + 1) * ch}, 1);
    cellOrder = c.unsqueeze(0);
    other = torch::arange(2 * BM, longs).add(BM).remainder(2 * BM).view({1, -1, 1});
    sameImageBg = image.repeat({2}).unsqueeze(1) == torch::arange(B, longs).repeat({2}).unsqueeze(0);
    allOther = k.unsqueeze(1) != k.unsqueeze(0);
    sameRegion = (image.unsqueeze(1) != image.unsqueeze(0)) & (slot.unsqueeze(1) == slot.unsqueeze(0));
  }
};

/// Each image's background cell: [B, 4] boxes (x1, y1, x2, y2) of the grid cell whose largest
/// intersection with any box (as a fraction of the cell) is smallest; first in row-major order on ties.
torch::Tensor backgroundBoxes(const torch::Tensor& annotations, const ShapeIndex& index) {
  const int64_t grid = index.grid;
  const double cw = static_cast<double>(index.width) / grid, ch = static_cast<double>(index.height) / grid;
  const auto ann = annotations.to(torch::kFloat64);
  const auto boxes = ann.slice(2, 0, 4);                                // [B, M, 4]
  const auto present = ann.select(2, 4) != -1;                          // boxes and ignore regions
  const auto c = index.cells.view({1, -1, 1, 4});
  const auto b = boxes.unsqueeze(1);                                    // [B, 1, M, 4]
  const auto iw = (torch::min(c.select(3, 2), b.select(3, 2)) - torch::max(c.select(3, 0), b.select(3, 0))).clamp_min(0);
  const auto ih = (torch::min(c.select(3, 3), b.select(3, 3)) - torch::max(c.select(3, 1), b.select(3, 1))).clamp_min(0);
  const auto iof = (iw * ih / (cw * ch)) * present.unsqueeze(1);       // [B, K, M]
  const auto cover = std::get<0>(iof.max(2));                          // [B, K] (M ≥ 1 here)
  const auto least = std::get<0>(cover.min(1, true));                  // [B, 1]
  const auto first = torch::where(cover == least, index.cellOrder, grid * grid).amin(1);  // [B]
  return index.cells.index_select(0, first);
}

#ifdef ONESTAGE_WITH_CUDA
/// ONESTAGE_CONTRASTIVE=ops: the LibTorch-ops path on CUDA too (to compare the two; read per call).
bool opsContrastive() {
  const char* v = std::getenv("ONESTAGE_CONTRASTIVE");
  return v != nullptr && std::string(v) == "ops";
}

/// Background cells the fused path handles (its shared memory: one double per cell).
constexpr int64_t kMaxFusedCells = 6144;

/// The fused NT-Xent of contrastive_cuda.cu with autograd: pooled region features [L, R, D] float32
/// (per level, row v·(BM + B) + k: view v's annotation row k, then the images' backgrounds), the level
/// mask [L, BM] (uint8), the annotations [B, M, 5] (labels), the negatives rule (0 other-class,
/// 1 all-other, 2 same-region-other-images), the temperature → {loss, counts int64 [2] (anchors,
/// anchors using the backgrounds)}. Forward: normalisation, one bmm, a row kernel, a sum; backward:
/// (W + Wᵀ) scaled, one bmm, the normalisation's backward.
class NtXentFunction : public torch::autograd::Function<NtXentFunction> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& onLevel,
                                                const torch::Tensor& ann, int64_t mode, double temperature) {
    const int64_t L = x.size(0), R = x.size(1), D = x.size(2);
    const auto [e, norm] = contrastiveNormalizeCuda(x.view({L * R, D}));
    const auto E = e.view({L, R, D});
    const auto [loss, counts, W, invCount] = contrastiveRowsCuda(at::bmm(E, E.transpose(1, 2)), onLevel, ann, mode, temperature);
    ctx->save_for_backward({e, norm, W, invCount});
    ctx->saved_data["temperature"] = temperature;
    ctx->mark_non_differentiable({counts});
    return {loss, counts};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::variable_list grads) {
    torch::autograd::variable_list none(5);
    if (!grads[0].defined()) return none;
    const auto s = ctx->get_saved_variables();
    const auto &e = s[0], &norm = s[1], &W = s[2], &invCount = s[3];
    const int64_t L = W.size(0), R = W.size(1), D = e.size(1);
    const auto A = contrastiveSymmetricCuda(W, grads[0].to(torch::kFloat32).contiguous(), invCount, ctx->saved_data["temperature"].toDouble());
    const auto dE = at::bmm(A, e.view({L, R, D}));
    none[0] = contrastiveNormalizeBackwardCuda(dE.view({L * R, D}), e, norm).view({L, R, D});
    return none;
  }
};
#endif

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
  const int64_t B = ann.size(0), M = ann.size(1), BM = B * M;
  ContrastiveParts out;
  const auto longOpts = torch::TensorOptions().dtype(torch::kLong).device(device);
  if (BM == 0) {  // no annotation rows at all: 0 with a gradient path
    auto zero = f1[0].sum() * 0.0 + f2[0].sum() * 0.0;
    for (int64_t l = 1; l < L; ++l) zero = zero + f1[l].sum() * 0.0 + f2[l].sum() * 0.0;
    out.loss = zero.to(torch::kFloat32);
    out.embeddings = out.withBackground = torch::zeros({}, longOpts);
    return out;
  }
  // Every annotation row k = b·M + j is pooled; rows that are not real boxes (padding −1, crowd ≤ −2)
  // stay in the tensors as masked rows, so nothing depends on how many boxes there are (no host
  // synchronisation, fixed shapes).
  const auto& index = ShapeIndex::get(B, M, inputHeight, inputWidth, o.backgroundGrid, device);
  std::vector<torch::Tensor> maps;
  std::vector<double> scales;
  for (int64_t l = 0; l < L; ++l) {
    const double stride = o.strides.empty() ? std::pow(2.0, static_cast<double>(o.firstLevel + l)) : o.strides[l];
    maps.push_back(f1[l]);
    maps.push_back(f2[l]);
    scales.push_back(1.0 / stride);
    scales.push_back(1.0 / stride);
  }
  // one RoIAlign over the boxes and the images' background cells, every level of both views →
  // [2L, BM + B, D] pooled (and projected) region features
  const auto regions = [&](const torch::Tensor& rois) {
    RoiAlignOptions ro;
    ro.outputHeight = ro.outputWidth = o.outputSize;
    ro.samplingRatio = o.samplingRatio;
    ro.aligned = true;
    // float32 [2L, BM + B, C · s · s] or its mean over the bins [2L, BM + B, C]
    auto flat = o.pooling == "flatten" ? roiAlignMany(maps, rois, scales, ro).flatten(2) : roiAlignManyMean(maps, rois, scales, ro);
    if (project) flat = project(flat.reshape({2 * L * (BM + B), -1})).view({2 * L, BM + B, -1});
    return flat;
  };
#ifdef ONESTAGE_WITH_CUDA
  if (device.is_cuda() && !opsContrastive() && index.cells.size(0) <= kMaxFusedCells) {
    const auto annC = ann.contiguous();
    const double cellArea = (static_cast<double>(inputWidth) / o.backgroundGrid) * (static_cast<double>(inputHeight) / o.backgroundGrid);
    const auto [rois, onLevel] = contrastivePrepareCuda(annC, index.cells, L, o.levels == "assigned", o.firstLevel, cellArea);
    const auto flat = regions(rois).to(torch::kFloat32).reshape({L, 2 * (BM + B), -1}).contiguous();
    const int64_t mode = o.negatives == "other-class" ? 0 : (o.negatives == "all-other" ? 1 : 2);
    const auto r = NtXentFunction::apply(flat, onLevel, annC, mode, o.temperature);
    out.loss = r[0];
    out.embeddings = r[1].select(0, 0);
    out.withBackground = r[1].select(0, 1);
    return out;
  }
#endif
  const auto rows = ann.view({BM, 5});
  const auto valid = rows.select(1, 4) >= 0;                                   // [BM]
  const auto boxes = torch::where(valid.unsqueeze(1), rows.slice(1, 0, 4), 0.0);  // no junk coordinates
  const auto cls = rows.select(1, 4).to(torch::kLong);
  // which levels a row counts on: every level, or the one FPN's rule gives it ('assigned' still pools
  // every level — one launch, fixed shapes — and masks the others out of the loss)
  torch::Tensor onLevel;  // [L, BM]
  if (o.levels == "assigned") {
    const auto side = ((boxes.select(1, 2) - boxes.select(1, 0)) * (boxes.select(1, 3) - boxes.select(1, 1))).clamp_min(1e-12).to(torch::kFloat64).sqrt();
    const auto level = (torch::floor(4.0 + torch::log2(side / 224.0)) - static_cast<double>(o.firstLevel)).clamp(0, L - 1).to(torch::kLong);
    onLevel = (level.unsqueeze(0) == torch::arange(L, longOpts).unsqueeze(1)) & valid.unsqueeze(0);
  } else {
    onLevel = valid.unsqueeze(0).expand({L, BM});
  }
  const auto background = backgroundBoxes(ann, index).to(torch::kFloat32);  // [B, 4]
  const auto rois = torch::cat({index.roiImage, torch::cat({boxes, background}, 0)}, 1);  // [BM + B, 5]
  const auto flat = regions(rois);
  const auto e = torch::nn::functional::normalize(flat, torch::nn::functional::NormalizeFuncOptions().dim(2)).view({L, 2, BM + B, -1});
  const auto E = e.slice(2, 0, BM).reshape({L, 2 * BM, -1});  // per level: view v's row k at v·BM + k
  const auto Bg = e.slice(2, BM).reshape({L, 2 * B, -1});     // per level: view v's background of image b at v·B + b

  // per level (negatives never cross levels): [L, 2BM, 2BM] similarities and masks
  torch::Tensor rule;  // [BM, BM]: may row k' be a negative of row k
  if (o.negatives == "other-class")
    rule = cls.unsqueeze(1) != cls.unsqueeze(0);
  else if (o.negatives == "all-other")
    rule = index.allOther;
  else
    rule = index.sameRegion;
  const auto anchor = onLevel.repeat({1, 2});                                       // [L, 2BM]
  const auto negative = rule.repeat({2, 2}).unsqueeze(0) & anchor.unsqueeze(2) & anchor.unsqueeze(1);
  const auto lonely = negative.any(2).logical_not();                                // [L, 2BM]
  const auto useBg = index.sameImageBg.unsqueeze(0) & lonely.unsqueeze(2);  // [L, 2BM, 2B]
  out.embeddings = anchor.sum();
  out.withBackground = (anchor & lonely).sum();
  const double invT = 1.0 / o.temperature;
  const auto S = torch::bmm(E, E.transpose(1, 2)) * invT;
  const auto pos = S.gather(2, index.other.expand({L, -1, 1}));  // [L, 2BM, 1]: the same row in the other view
  const double negInf = -std::numeric_limits<double>::infinity();
  const auto negS = S.masked_fill(negative.logical_not(), negInf);
  const auto bgS = torch::bmm(E, Bg.transpose(1, 2)).mul(invT).masked_fill(useBg.logical_not(), negInf);
  const auto lse = torch::logsumexp(torch::cat({pos, negS, bgS}, 2), 2, true);
  const auto perAnchor = torch::where(anchor, (lse - pos).squeeze(2), 0.0);
  out.loss = perAnchor.sum() / out.embeddings.clamp_min(1).to(torch::kFloat32);
  return out;
}

}  // namespace onestage
