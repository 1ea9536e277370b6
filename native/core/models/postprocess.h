// Post-processing shared by the detectors: candidate selection per level, decoding, clipping,
// class-aware NMS and the final ranking, batched over images (padded outputs), no gradient.
#pragma once
#include <torch/torch.h>

#include <functional>
#include <vector>

namespace onestage {

struct DetectOptions {
  double scoreThreshold = 0.05;
  int64_t topkCandidates = 1000;  // per level and image; ≤ 0: all above the threshold
  double nmsThreshold = 0.5;
  int64_t maxDetections = 100;    // per image; ≤ 0: all kept
  bool amp = false;               // bf16 autocast of the forward pass (CUDA); post-processing in float32
  /// Detector::detectGraphed: forward and post-processing replayed as a CUDA graph per input shape.
  bool cudaGraph = false;
};

/// Detections of a batch, padded: rows [0, count[b]) of image b are real, by decreasing score.
struct Detections {
  torch::Tensor boxes;   // [B, D, 4] float32
  torch::Tensor scores;  // [B, D] float32
  torch::Tensor labels;  // [B, D] int64
  torch::Tensor count;   // [B] int64
};

/// Checks a detector's input: images [B, 3, H, W] float32, H, W ≥ 1, on the model's device.
void checkDetectorInput(const torch::Tensor& images, const torch::Device& modelDevice);

/// Boxes of candidate locations: index [B, K] int64 (rows of the N locations) → boxes [B, K, 4].
using CandidateDecoder = std::function<torch::Tensor(const torch::Tensor& location)>;

/// scores [B, N, C] probabilities over N locations (levelSizes: locations per level, Σ = N): per
/// level the top-k (location, class) pairs above the threshold, their boxes from `decode`, clipped
/// to limits [B, 2] (height, width), class-aware NMS per image, at most maxDetections by score.
Detections selectAndSuppress(const torch::Tensor& scores, const std::vector<int64_t>& levelSizes, const CandidateDecoder& decode,
                             const torch::Tensor& limits, const DetectOptions& opts);

/// Checks scales [B] and sizes [B, 2] (original height, width) against images [B, 3, H, W]; returns
/// them as float32 on the images' device and the clipping limits in input pixels (the resized image
/// region, never past the padded input).
struct DetectionFrame {
  torch::Tensor scales, sizes, limits;
};
/// The shape checks of detectionFrame alone: scales [B], sizes [B, 2] (RangeError naming the argument).
void checkFrameShapes(int64_t batch, const torch::Tensor& scales, const torch::Tensor& sizes);
DetectionFrame detectionFrame(const torch::Tensor& images, const torch::Tensor& scales, const torch::Tensor& sizes);

/// Boxes mapped from input pixels to original pixels (÷ scale, clipped to the original size).
void toOriginalPixels(Detections& det, const DetectionFrame& frame);

}  // namespace onestage
