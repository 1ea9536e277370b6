#include "core/models/postprocess.h"

#include "core/boxes.h"
#include "core/errors.h"
#include "core/nms.h"
#include "core/tensor_types.h"

namespace onestage {

void checkDetectorInput(const torch::Tensor& images, const torch::Device& modelDevice) {
  if (images.dim() != 4 || images.size(1) != 3)
    throw RangeError("images: expected shape [B, 3, H, W] but received " + describeShape(images.sizes()));
  if (images.scalar_type() != torch::kFloat32)
    throw TypeError("images: expected a float32 tensor but received " + dtypeName(images.scalar_type()));
  if (images.size(2) < 1 || images.size(3) < 1) throw RangeError("images: height and width must be at least 1");
  if (images.device() != modelDevice)
    throw TypeError("images are on " + deviceName(images.device()) + " but the model is on " + deviceName(modelDevice));
}

Detections selectAndSuppress(const torch::Tensor& scores, const std::vector<int64_t>& levelSizes, const CandidateDecoder& decode,
                             const torch::Tensor& limits, const DetectOptions& opts) {
  torch::NoGradGuard noGrad;
  const int64_t B = scores.size(0), C = scores.size(2);
  std::vector<torch::Tensor> candScores, candLocation, candLabel;
  int64_t start = 0;
  for (const int64_t n : levelSizes) {
    auto s = scores.narrow(1, start, n).reshape({B, n * C});
    auto masked = torch::where(s > opts.scoreThreshold, s, torch::full_like(s, -1));
    int64_t k = n * C;
    if (opts.topkCandidates > 0) k = std::min(k, opts.topkCandidates);
    else k = std::max<int64_t>((s > opts.scoreThreshold).sum(1).max().item<int64_t>(), 0);  // all above the threshold
    if (k > 0) {
      auto [vals, idx] = masked.topk(k, 1, true, true);
      candScores.push_back(vals);
      candLocation.push_back(idx.div(C, "floor") + start);
      candLabel.push_back(idx.remainder(C));
    }
    start += n;
  }
  const auto opt = scores.options();
  if (candScores.empty()) {
    return {torch::zeros({B, 0, 4}, opt), torch::zeros({B, 0}, opt), torch::zeros({B, 0}, opt.dtype(torch::kInt64)),
            torch::zeros({B}, opt.dtype(torch::kInt64))};
  }
  const auto cScores = torch::cat(candScores, 1);  // [B, K]
  const auto cLocation = torch::cat(candLocation, 1);
  const auto cLabel = torch::cat(candLabel, 1);
  const auto valid = cScores > opts.scoreThreshold;
  const int64_t K = cScores.size(1);
  const auto boxes = clipBoxesPerImage(decode(cLocation), limits);
  const auto keep = paddedBatchNms(boxes, cScores, cLabel, valid, opts.nmsThreshold);
  // final order: kept by decreasing score, at most maxDetections
  const auto ranked = torch::where(keep, cScores.to(torch::kFloat64), torch::full_like(cScores, -INFINITY, torch::kFloat64));
  const auto order = std::get<1>(ranked.sort(true, 1, true));
  const int64_t D = opts.maxDetections > 0 ? std::min(opts.maxDetections, K) : K;
  const auto top = order.narrow(1, 0, D);
  Detections det;
  det.count = keep.sum(1).clamp_max(D);
  det.scores = cScores.gather(1, top);
  det.labels = cLabel.gather(1, top);
  det.boxes = boxes.gather(1, top.unsqueeze(-1).expand({B, D, 4}));
  return det;
}

void checkFrameShapes(int64_t B, const torch::Tensor& scales, const torch::Tensor& sizes) {
  if (scales.dim() != 1 || scales.size(0) != B)
    throw RangeError("scales: expected one per image (" + std::to_string(B) + ") but received " + describeShape(scales.sizes()));
  if (sizes.dim() != 2 || sizes.size(0) != B || sizes.size(1) != 2)
    throw RangeError("sizes: expected [" + std::to_string(B) + ", 2] (height, width) but received " + describeShape(sizes.sizes()));
}

DetectionFrame detectionFrame(const torch::Tensor& images, const torch::Tensor& scalesIn, const torch::Tensor& sizesIn) {
  const int64_t B = images.size(0);
  const auto f32 = torch::TensorOptions().dtype(torch::kFloat32).device(images.device());
  DetectionFrame f;
  checkFrameShapes(B, scalesIn, sizesIn);
  f.scales = scalesIn.to(f32);
  f.sizes = sizesIn.to(f32);
  // the resized region, never past the padded input (scalar clamps: no host-to-device copy, so that a
  // CUDA graph can record it)
  f.limits = f.sizes * f.scales.unsqueeze(1);
  f.limits.select(1, 0).clamp_max_(static_cast<double>(images.size(2)));
  f.limits.select(1, 1).clamp_max_(static_cast<double>(images.size(3)));
  return f;
}

void toOriginalPixels(Detections& det, const DetectionFrame& frame) {
  const int64_t B = frame.scales.size(0);
  det.boxes = clipBoxesPerImage(det.boxes / frame.scales.view({B, 1, 1}), frame.sizes);
}

}  // namespace onestage
