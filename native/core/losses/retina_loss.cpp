#include "core/losses/retina_loss.h"

#include "core/errors.h"

namespace onestage {

RetinaLoss::RetinaLoss(RetinaLossOptions options) : options_(std::move(options)) {
  const auto& o = options_;
  if (o.classification != "focal" && o.classification != "ghmc")
    throw RangeError("Expected 'focal' or 'ghmc' for classification but received '" + o.classification + "'");
  if (o.regression != "smoothL1" && o.regression != "l1" && o.regression != "giou" && o.regression != "ghmr" &&
      o.regression != "none")
    throw RangeError("Expected one of smoothL1, l1, giou, ghmr, none for regression but received '" + o.regression + "'");
}

namespace {

/// Runs `loss(pred, target, weight, state)` once, or per level along dim 1 and sums. Per level, every
/// call updates the one shared state in level order, as mmdetection's RetinaNet head calls its single
/// GHMC/GHMR module (one `acc_sum` buffer) once per level: P4's weights see the EMA after P3's update.
template <typename F>
torch::Tensor overLevels(bool perLevel, const std::vector<int64_t>& levels, std::vector<GhmState>& states, const MeanReducer& reduce,
                         const torch::Tensor& pred, const torch::Tensor& target, const torch::Tensor& weight, F loss) {
  if (perLevel) {
    int64_t total = 0;
    for (auto n : levels) total += n;
    if (levels.empty() || total != pred.size(1))
      throw RangeError("per-level GHM needs levelSizes summing to the anchor count " + std::to_string(pred.size(1)));
  }
  states.resize(1);
  states[0].mean = reduce;
  if (!perLevel) return loss(pred, target, weight, states[0]);
  torch::Tensor sum;
  int64_t start = 0;
  for (size_t l = 0; l < levels.size(); ++l) {
    auto part = loss(pred.narrow(1, start, levels[l]), target.narrow(1, start, levels[l]), weight.narrow(1, start, levels[l]), states[0]);
    sum = sum.defined() ? sum + part : part;
    start += levels[l];
  }
  return sum;
}

}  // namespace

LossParts RetinaLoss::forward(const torch::Tensor& cls, const torch::Tensor& reg, const torch::Tensor& anchors,
                              const torch::Tensor& annotations, const std::vector<int64_t>& levelSizes) {
  checkDetectionLossInputs(cls, reg, anchors, annotations);
  const auto& o = options_;
  const auto a = assignMaxIou(anchors, annotations, o.focal.assigner);
  LossParts out;
  if (o.classification == "focal") {
    out.cls = focalClassification(cls, a, o.focal);
  } else {
    // labels form (fused): −1 background, −2 ignored (weight 0)
    const auto weight = (a.labels != -2).to(cls.scalar_type());
    const auto opts = o.ghmc;
    out.cls = overLevels(o.ghmPerLevel, levelSizes, ghmc_, o.ghmAcrossRanks ? ghmReduce_ : MeanReducer(), cls, a.labels, weight,
                         [&](const torch::Tensor& p, const torch::Tensor& t, const torch::Tensor& w, GhmState& s) {
                           return ghmcLossLabels(p, t, w, opts, s);
                         });
  }
  if (o.regression != "ghmr") {
    FocalLossOptions focal = o.focal;
    focal.regression = o.regression;
    out.reg = focalRegression(reg, anchors, a, focal);
  } else {
    const auto target = o.focal.coder.encode(anchors.to(reg.scalar_type()).unsqueeze(0), a.boxes.to(reg.scalar_type())).detach();
    const auto weight = (a.labels >= 0).unsqueeze(-1).expand_as(reg).to(reg.scalar_type());
    const auto opts = o.ghmr;
    out.reg = overLevels(o.ghmPerLevel, levelSizes, ghmr_, o.ghmAcrossRanks ? ghmReduce_ : MeanReducer(), reg, target, weight,
                         [&](const torch::Tensor& p, const torch::Tensor& t, const torch::Tensor& w, GhmState& s) {
                           return ghmrLoss(p, t, w, opts, s);
                         });
  }
  out.cls = out.cls * o.clsWeight;
  out.reg = out.reg * o.regWeight;
  return out;
}

}  // namespace onestage
