// One training step of a detector in one native call: forward (train mode; BatchNorm frozen as the
// model says), the architecture's loss (the RetinaNet loss composer, or the NanoDet-Plus loss with
// its AGM), a finiteness check, backward, gradient-norm clipping,
// and the optimizer step (LibTorch's SGD or AdamW). A non-finite loss or gradient skips the step
// (no update) and says so — never a silent skip.
#pragma once
#include <torch/torch.h>

#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "core/dist/gradient_buckets.h"
#include "core/dist/process_group.h"
#include "core/losses/nanodet_loss.h"
#include "core/losses/retina_loss.h"
#include "core/models/detector.h"
#include "core/train/multi_tensor.h"
#include "core/train/step_turns.h"

namespace onestage {

struct OptimizerOptions {
  std::string type = "sgd";  // "sgd" | "adamw"
  double lr = 0.01;
  double momentum = 0.9;     // sgd
  double weightDecay = 1e-4;
  bool nesterov = false;     // sgd
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;  // adamw
  double clipGradNorm = 0.1;  // ≤ 0: no clipping (pytorch-retinanet clips at 0.1)
  /// The backbone's parameters (conv1, bn1, layer1–4) train at lr × this (a second param group).
  double backboneLrMultiplier = 1.0;
  /// How the update runs (core/train/multi_tensor.h): "auto" | "fused" | "foreach" | "loop".
  std::string implementation = "auto";
};

struct TrainingOptions {
  /// bf16 autocast of the forward pass (CUDA only); losses are computed in float32.
  bool amp = false;
  /// Convolution weights and inputs in channels-last (NHWC) memory order: the layout cuDNN's tensor-core
  /// kernels use natively (same arithmetic; the model keeps the layout afterwards, inference too).
  bool channelsLast = false;
  /// Exponential moving average of the weights (parameters and buffers): after each applied step
  /// ema = d·ema + (1 − d)·w with d = decay·(1 − exp(−updates / tau)) (the ramp of YOLOv5/NanoDet's
  /// ModelEMA). decay 0 disables.
  double emaDecay = 0.0;
  double emaTau = 2000.0;
  /// CPU data parallelism: the batch is split into this many chunks, each run (forward, loss,
  /// backward) by its own copy of the model on its own thread; gradients are summed into the model
  /// (each chunk's loss weighted by its share of the images, so the sum is the batch mean) before
  /// one optimizer step. BatchNorm statistics are per chunk (as under DistributedDataParallel) and
  /// the model's running statistics are those of the first chunk. Needs per-image normalised,
  /// stateless losses (focal 'retinanet', or 'logits' with normalize 'image'; no GHM).
  int64_t replicas = 1;
  /// Data parallelism across processes (c10d): at the first step every rank takes rank 0's weights,
  /// gradients averaged over the ranks every step (bucketed, overlapped with backward), the reported
  /// losses are the means over the ranks (so every rank skips the same steps), and NanoDet-Plus's
  /// normalisers are all-reduced means. None: a single process.
  std::shared_ptr<ProcessGroup> group;
  /// Gradient bucket size (bytes) for the all-reduce; the first bucket is 1 MiB.
  int64_t bucketBytes = 25 << 20;
  /// CUDA graphs of the training step (a model on CUDA, no CPU replicas, one learning rate): once a
  /// batch shape has been trained eagerly kGraphWarmupSteps times, forward, losses (RetinaNet's or
  /// NanoDet-Plus's, assignment included), backward, gradient clipping and the loss values are
  /// captured as one CUDA graph and replayed for every later batch of that shape with at most as many
  /// boxes as the graph's padded capacity; the optimizer update, the EMA and the skip decision run
  /// after the replay, as in the eager step — except a queued update (queuedUpdate_), which the graph
  /// holds, skip decision included. Up to kMaxGraphs shapes are kept (their
  /// activations share one memory pool); further shapes run eagerly.
  /// Data-parallel (an NCCL group): the gradient buckets' all-reduces, the losses' and the normalisers'
  /// are captured with the step; each step first gathers every rank's batch shape and box count (one
  /// small all-reduce), so that all ranks capture and replay the same graphs together; a capture that
  /// fails on one rank fails on all; a replay that does not finish within the group's timeout (a rank
  /// stopped) is an error.
  /// "off": never; "on": as described, and a configuration that cannot be graphed is an error;
  /// "auto": on where the configuration allows it (in one process), off otherwise, and a capture that
  /// fails turns the graphs off for the rest of the session (StepResult::graphWarning says why) instead
  /// of failing.
  std::string cudaGraph = "off";
};

/// Eager steps of one batch shape before the step is captured (cuDNN's benchmark and lazily created
/// state settle in them).
constexpr int64_t kGraphWarmupSteps = 3;
/// Captured shapes kept at once (their activations share one memory pool; each keeps its own gradients).
constexpr size_t kMaxGraphs = 4;

struct StepResult {
  /// cls: classification terms (NanoDet-Plus: QFL of both heads); reg: box terms (GIoU + DFL).
  double cls = 0, reg = 0, contrastive = 0, total = 0;
  /// The architecture's own terms by name (NanoDet-Plus: qfl, bbox, dfl, auxQfl, auxBbox, auxDfl).
  std::vector<std::pair<std::string, double>> components;
  double gradNorm = 0;  // before clipping
  bool skipped = false;
  std::string reason;   // why it was skipped
  /// How it ran: "off" (no cudaGraph), "eager" (cudaGraph, not captured yet for this shape),
  /// "captured" (recorded, then replayed), "replayed".
  std::string graph = "off";
  /// Set once, at the step where cudaGraph "auto" gave up on graphs: why (the step itself ran eagerly).
  std::string graphWarning;
  /// The update was queued on the device before the losses were read, the skip decided there (see
  /// TrainingSession::queuedUpdate_); false: read first, then updated or skipped on the host's word.
  bool updateQueued = false;
};

class TrainingSession {
 public:
  /// loss: the RetinaNet composer's options (RetinaNet models); nanodetLoss: NanoDet-Plus models'.
  TrainingSession(std::shared_ptr<Detector> detector, const OptimizerOptions& optimizer, const RetinaLossOptions& loss,
                  const TrainingOptions& training = {}, const NanoDetLossOptions& nanodetLoss = {});
  ~TrainingSession();

  /// images [B, 3, H, W] float32, annotations [B, M, 5] (−1 padded), on the model's device; lr for this
  /// step; views [B, 3, H, W]: the contrastive second view (needed when the loss has a contrastive weight);
  /// epoch: the epoch this step belongs to (NanoDet-Plus detaches the AGM from detachEpoch on).
  /// ticket: this step's place in the order (turns().take(), taken where the order is known); without
  /// one the step takes the next when it arrives. Steps run one at a time, in ticket order.
  StepResult step(const torch::Tensor& images, const torch::Tensor& annotations, double lr, const torch::Tensor& views = {},
                  int64_t epoch = 0, std::optional<uint64_t> ticket = std::nullopt);
  StepTurns& turns() { return turns_; }

  /// Everything of the session that is not the model's weights — optimizer state (momentum buffers,
  /// Adam moments, step counts), GHM momentum states, the EMA weights and their update count — to and
  /// from a LibTorch archive of onestage's own, written atomically. Loading checks that the file was
  /// written by a session of the same kind (optimizer type, parameter shapes, GHM bins, EMA on/off).
  void saveState(const std::string& path);
  void loadState(const std::string& path);

  /// Swaps the model's weights with the EMA weights (a second call swaps back). No-op without EMA.
  void swapEma();
  bool hasEma() const { return !ema_.empty(); }
  int64_t emaUpdates() const { return emaUpdates_; }

  std::shared_ptr<Detector> detector() { return detector_; }

 private:
  /// A step whose update is queued: its loss values, read after its turn is served.
  struct QueuedRead {
    std::vector<std::string> names;
    torch::Tensor values;        // [names + 1] float64 on the host (page-locked, a copy in flight on CUDA)
    std::function<void()> wait;  // until the copy has landed (CUDA); empty on the CPU
  };
  std::shared_ptr<Detector> detector_;
  StepTurns turns_;
  std::shared_ptr<RetinaNetDetector> retina_;    // set for RetinaNet models
  std::shared_ptr<NanoDetPlusDetector> nanodet_;  // set for NanoDet-Plus models
  NanoDetLossOptions nanodetLoss_;
  /// Forward, the architecture's losses and backward: the named loss terms (detached use only). epoch:
  /// NanoDet-Plus's AGM detaches from detachEpoch on.
  std::vector<std::pair<std::string, torch::Tensor>> forwardBackward(const torch::Tensor& x, const torch::Tensor& ann, const torch::Tensor& views,
                                                                     int64_t epoch);
  /// RetinaNet's forward, losses and backward (forwardBackward's RetinaNet part).
  std::vector<std::pair<std::string, torch::Tensor>> forwardBackwardRetinaNet(const torch::Tensor& x, const torch::Tensor& ann,
                                                                              const torch::Tensor& views);
  /// NanoDet-Plus's forward, losses (both heads, DSL assignment) and backward.
  std::vector<std::pair<std::string, torch::Tensor>> forwardBackwardNanoDetPlus(const torch::Tensor& x, const torch::Tensor& ann, int64_t epoch);
  /// The StepResult's loss fields from the values of the named terms (RetinaNet: cls, reg[, contrastive];
  /// NanoDet-Plus: its six components).
  void fillLosses(const std::vector<std::string>& names, const std::vector<double>& values, StepResult& r) const;
  /// step() with TrainingOptions::cudaGraph: eager, capture or replay (training_session.cpp).
  /// With queuedUpdate_ the update is captured too, and q gets the values to read after the turn.
  StepResult graphStep(const torch::Tensor& images, const torch::Tensor& annotations, const torch::Tensor& views, int64_t epoch, QueuedRead& q);
  /// Records forward, losses, backward, clipping and the loss values on static inputs of this shape
  /// (annotations padded to `capacity` rows) as a graph of the cache; nothing runs until the replay.
  void captureStep(const std::vector<int64_t>& key, int64_t capacity, const torch::Tensor& images, const torch::Tensor& annotations,
                   const torch::Tensor& views, int64_t epoch);
  /// step() after the learning rate is set: forward, losses, backward, update, without a graph.
  /// With queuedUpdate_ the update is queued and q gets the values to read after the turn.
  StepResult eagerStep(const torch::Tensor& images, const torch::Tensor& annotations, const torch::Tensor& views, int64_t epoch, QueuedRead& q);
  /// Data-parallel graphs: every rank's capture outcome; this rank's failure, or one naming the ranks
  /// whose capture failed (empty: captured everywhere). Every rank calls it after every capture.
  std::string agreeOnCapture(const std::string& failure);
  /// Data-parallel graphs: waits for the replay queued on `stream` on the host, up to the group's
  /// timeout (then an error naming the rank): a rank that stopped would hold the replay's all-reduces forever.
  void awaitReplay(const c10::Stream& stream);
  /// ONESTAGE_TEST_CAPTURE_FAILURE is set (for this rank): the test of the failed-capture path.
  bool testCaptureFailure() const;
  struct Graphs;  // the captured steps, their stream and static inputs (CUDA builds)
  std::unique_ptr<Graphs> graphs_;
  void updateEma();
  /// Forward, loss and backward of the batch split over the model and its replicas.
  LossParts forwardBackwardParallel(const torch::Tensor& images, const torch::Tensor& annotations);
  std::vector<torch::Tensor> emaTargets();  // parameters then buffers, in registration order

  OptimizerOptions options_;
  TrainingOptions training_;
  std::unique_ptr<RetinaLoss> loss_;  // RetinaNet models only
  std::vector<torch::Tensor> ema_;
  std::vector<RetinaNet> replicas_;
  torch::nn::Sequential projection_{nullptr};  // the contrastive loss's projection head, when asked
  std::vector<std::unique_ptr<RetinaLoss>> replicaLosses_;
  int64_t emaUpdates_ = 0;
  std::unique_ptr<torch::optim::Optimizer> optimizer_;
  std::vector<torch::Tensor> params_;
  std::unique_ptr<GradientBuckets> buckets_;  // data-parallel gradient averaging
  bool synchronised_ = false;                 // rank 0's weights broadcast (at the first step)
  UpdateImpl update_ = UpdateImpl::Loop;
  /// The named losses and the gradient norm as one float64 device tensor [named + 1] (the losses as
  /// means over the ranks under data parallelism).
  torch::Tensor stackLosses(const std::vector<std::pair<std::string, torch::Tensor>>& named, const torch::Tensor& gradNorm);
  /// The stacked values on the host (one transfer): values and norm; false (with the reason) when a
  /// loss is not finite.
  bool readLosses(const std::vector<std::string>& names, const torch::Tensor& stacked, std::vector<double>& values, double& norm,
                  std::string& reason);
  /// Clipping of the current gradients; returns their norm before clipping (device scalar).
  torch::Tensor clipGradients();
  /// After the host read: the skip (reason set) or the update and the EMA.
  void concludeStep(bool finiteLoss, double hostNorm, StepResult& r);
  /// The record's verdict from the values read: skipped (and why) or not, the gradient norm. Touches
  /// nothing of the model.
  static void judgeStep(bool finiteLoss, double hostNorm, StepResult& r);
  /// SGD's update (one process, one parameter group, no EMA, no replicas) queued on the device behind
  /// the step, skipped there when a loss or the gradient norm is not finite: the step needs no host
  /// read before it ends, so its turn is served and the next step queued while its losses travel to
  /// the host. On with the fused SGD (CUDA, LibTorch ≥ 2.4; ONESTAGE_TEST_QUEUED_UPDATE forces the
  /// same control flow on the CPU for the tests).
  bool queuedUpdate_ = false;
  /// The step's learning rate on the device (float32 scalar) for the fused SGD kernel and the graphs
  /// that hold it; undefined without the fused SGD.
  torch::Tensor lrTensor_;
  /// Queues the update (skip decided on the device from `stacked`) and the host copy of `stacked`.
  void queueUpdate(const std::vector<std::string>& names, const torch::Tensor& stacked, QueuedRead& q);
  /// The copy of the values to the host (in flight on CUDA: q.wait waits for it).
  static void copyToHost(const torch::Tensor& stacked, QueuedRead& q);
  /// SGD momentum buffers (zeros) for every parameter that has none yet: before a capture that holds the update.
  void ensureMomentumBuffers();
  /// Waits for the values of a queued step and fills its record.
  void readQueued(QueuedRead& q, StepResult& r);
  /// The optimizer update of the parameters that have gradients (implementation update_); `skip` (float32
  /// device scalar, 1 skip) defined: the queued SGD update, which the device skips or applies.
  void applyUpdate(const torch::Tensor& skip = {});
  /// backward of `loss` with the data-parallel gradient averaging around it.
  void backward(const torch::Tensor& loss);
  /// The end of every step once the gradients exist: clipping, the single host read of the losses and
  /// the norm, then the update and the EMA — or the skip when anything is not finite.
  void finishStep(const std::vector<std::pair<std::string, torch::Tensor>>& named, std::vector<double>& values, StepResult& r);
};

}  // namespace onestage
