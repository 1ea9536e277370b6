#include "core/train/training_session.h"

#include <ATen/autocast_mode.h>

#include "core/autocast.h"

#include <sstream>
#include <torch/version.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <random>
#include <map>
#include <set>
#include <thread>
#include <utility>

#include "core/capture_lock.h"
#include "core/cpu_threads.h"
#include "core/graph_capture.h"
#include "core/errors.h"

#ifdef ONESTAGE_WITH_CUDA
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace onestage {

namespace {

/// What a training step's forward is for (ConvWeightCopies): data-parallel steps make no weight copies.
ConvWeightCopies::Purpose stepPurpose(const TrainingOptions& training) {
  return training.group ? ConvWeightCopies::Purpose::dataParallelStep : ConvWeightCopies::Purpose::trainingStep;
}

constexpr const char* kStateFormat = "onestage-trainer-state-1";

}  // namespace

/// The captured training steps (TrainingOptions::cudaGraph), one per batch shape. A step's inputs are
/// static tensors the batch is copied into (annotations padded with −1 rows to the box capacity); its
/// graph writes the gradients into the shared memory pool — `grads` are those tensors, given back to the
/// parameters after every replay — and the losses and gradient norm into `values`. Steps run on the
/// model's device thread.
struct TrainingSession::Graphs {
#ifdef ONESTAGE_WITH_CUDA
  struct Captured {
    std::vector<int64_t> key;  // images B, C, H, W; views given; NanoDet-Plus's AGM detached
    int64_t boxes = 0;         // annotation rows of the static input
    std::unique_ptr<at::cuda::CUDAGraph> graph;
    torch::Tensor images, annotations, views, values;
    std::vector<torch::Tensor> grads;
    std::vector<std::string> names;
  };
  Graphs(const torch::Device& device, bool automatic) : stream(c10::cuda::getStreamFromPool(false, device.index())), automatic(automatic) {}

  c10::cuda::CUDAStream stream;  // every graph-mode step runs here (captures need a side stream)
  bool automatic;                // cudaGraph "auto": a failed capture turns graphs off instead of failing
  std::vector<Captured> captured;
  /// The memory pool the graphs share (the first capture's; later ones capture into it): only one
  /// graph runs at a time and each rewrites its outputs completely, so activations can overlap.
  GraphPool pool{0, 0};
  /// eager steps per (key, capacity) since that pair's last capture
  std::map<std::vector<int64_t>, int64_t> seen;

  /// The captured step for `key` whose capacity holds `boxes` rows, or nullptr.
  Captured* find(const std::vector<int64_t>& key, int64_t boxes) {
    for (auto& c : captured)
      if (c.key == key && boxes <= c.boxes) return &c;
    return nullptr;
  }
  /// Drops every graph (their pool goes with the last one).
  void clear() {
    captured.clear();
    seen.clear();
    pool = {0, 0};
  }
#endif
  bool disabled = false;  // cudaGraph "auto" after a failed capture: every step eager
};

TrainingSession::~TrainingSession() = default;

TrainingSession::TrainingSession(std::shared_ptr<Detector> detector, const OptimizerOptions& o, const RetinaLossOptions& loss,
                                 const TrainingOptions& training, const NanoDetLossOptions& nanodetLoss)
    : detector_(std::move(detector)), nanodetLoss_(nanodetLoss), options_(o), training_(training) {
  retina_ = std::dynamic_pointer_cast<RetinaNetDetector>(detector_);
  nanodet_ = std::dynamic_pointer_cast<NanoDetPlusDetector>(detector_);
  if (!retina_ && !nanodet_) throw std::logic_error("training: unknown detector architecture");
  if (retina_) loss_ = std::make_unique<RetinaLoss>(loss);
  if (training.amp && !detector_->device().is_cuda())
    throw RangeError("amp (bf16 autocast) needs a model on CUDA; this one is on " + detector_->device().str());
  if (!(training.emaDecay >= 0 && training.emaDecay < 1)) throw RangeError("Expected a number in [0, 1) for ema decay");
  if (!(training.emaTau > 0)) throw RangeError("Expected a positive number for ema tau");
  for (const auto& p : detector_->module().parameters())
    if (p.requires_grad()) params_.push_back(p);
  const auto& ct = loss.contrastive;
  if (nanodet_ && ct.weight > 0)
    throw RangeError("the contrastive loss trains jointly with RetinaNet's losses; this model is NanoDet-Plus");
  if (retina_ && ct.weight > 0 && ct.projectionHidden > 0) {
    // SimCLR's projection head on the pooled region features; trained with the model
    const int64_t channels = retina_->net()->config().featureSize;
    const int64_t in = ct.loss.pooling == "flatten" ? channels * ct.loss.outputSize * ct.loss.outputSize : channels;
    projection_ = torch::nn::Sequential(torch::nn::Linear(in, ct.projectionHidden), torch::nn::ReLU(), torch::nn::Linear(ct.projectionHidden, ct.projectionOut));
    projection_->to(detector_->device());
    for (const auto& p : projection_->parameters()) params_.push_back(p);
  }
  if (!(o.lr > 0)) throw RangeError("optimizer lr must be positive");
  update_ = resolveUpdateImpl(o.implementation, o.type, detector_->device());
  // before the optimizer's state and the EMA copies exist, so that they take the layout too
  if (training.channelsLast) detector_->setChannelsLast(true);
  if (!(o.backboneLrMultiplier >= 0) || !std::isfinite(o.backboneLrMultiplier)) throw RangeError("optimizer backboneLrMultiplier must be a finite number ≥ 0");
  // param group 0: everything but the backbone; group 1 (with a multiplier ≠ 1): the backbone at lr × multiplier
  std::vector<torch::Tensor> rest, backbone;
  if (o.backboneLrMultiplier != 1.0) {
    std::set<const void*> inBackbone;
    for (const auto& p : detector_->module().named_parameters(true))
      if (detector_->isBackboneKey(p.key())) inBackbone.insert(p.value().unsafeGetTensorImpl());
    for (const auto& p : params_) (inBackbone.count(p.unsafeGetTensorImpl()) ? backbone : rest).push_back(p);
  }
  const auto groups = [&](auto defaults) {
    std::vector<torch::optim::OptimizerParamGroup> g;
    if (backbone.empty()) {
      g.emplace_back(params_);
    } else {
      g.emplace_back(rest);
      auto scaled = std::make_unique<decltype(defaults)>(defaults);
      scaled->lr(o.lr * o.backboneLrMultiplier);
      g.emplace_back(backbone, std::move(scaled));
    }
    return g;
  };
  if (o.type == "sgd") {
    const auto d = torch::optim::SGDOptions(o.lr).momentum(o.momentum).weight_decay(o.weightDecay).nesterov(o.nesterov);
    optimizer_ = std::make_unique<torch::optim::SGD>(groups(d), d);
  } else if (o.type == "adamw") {
    const auto d = torch::optim::AdamWOptions(o.lr).betas({o.beta1, o.beta2}).eps(o.eps).weight_decay(o.weightDecay);
    optimizer_ = std::make_unique<torch::optim::AdamW>(groups(d), d);
  } else {
    throw RangeError("Expected 'sgd' or 'adamw' for optimizer.type but received '" + o.type + "'");
  }
  if (training.group) {
    const auto& group = *training.group;
    if (detector_->device() != group.device())
      throw RangeError("data-parallel training with the " + group.backend() + " backend needs the model on " + group.device().str() + "; it is on " +
                       detector_->device().str() + (detector_->device().is_cuda() ? " (use the nccl backend for CUDA)" : " (use the gloo backend on the CPU)"));
    buckets_ = std::make_unique<GradientBuckets>(training.group, params_, training.bucketBytes);
    if (loss_) {
      auto groupPtr = training.group;
      loss_->setGhmReducer([groupPtr](const torch::Tensor& t) { return groupPtr->mean(t, "all-reduce of GHM bin counts"); });
    }
  }
  if (training.emaDecay > 0) {
    torch::NoGradGuard noGrad;
    for (const auto& t : emaTargets()) ema_.push_back(t.detach().clone());
  }
  if (training.replicas < 1 || training.replicas > 256) throw RangeError("Expected an integer between 1 and 256 for replicas");
  if (training.cudaGraph != "off" && training.cudaGraph != "on" && training.cudaGraph != "auto")
    throw RangeError("Expected 'off', 'on' or 'auto' for cudaGraph but received '" + training.cudaGraph + "'");
  if (training.cudaGraph != "off") {
#ifdef ONESTAGE_WITH_CUDA
    const bool cuda = detector_->device().is_cuda();
#else
    const bool cuda = false;
#endif
    // why this configuration cannot be graphed (empty: it can)
    std::string refusal;
    if (!cuda)
      refusal = "cudaGraph needs a model on CUDA (and a CUDA build); this one is on " + detector_->device().str();
    else if (training.group && training.cudaGraph == "auto")
      // data-parallel steps are graphed on request only: a graph with NCCL collectives must be captured and
      // replayed by every rank together, and a rank that stops is then noticed by the replay's timeout
      refusal = "cudaGraph 'auto' keeps data-parallel steps eager (cudaGraph true graphs them)";
    else if (training.replicas > 1)
      refusal = "cudaGraph cannot be combined with replicas > 1";
    else if (o.backboneLrMultiplier != 1.0)
      refusal = "backboneLrMultiplier and cudaGraph cannot be combined (the captured update has one learning rate)";
    if (!refusal.empty() && training.cudaGraph == "on") throw RangeError(refusal);
#ifdef ONESTAGE_WITH_CUDA
    if (refusal.empty()) graphs_ = std::make_unique<Graphs>(detector_->device(), training.cudaGraph == "auto");
#endif
  }
  if (training.replicas > 1) {
    if (nanodet_) throw RangeError("replicas > 1 is not available for NanoDet-Plus (its loss normalisers are batch-wide); use replicas 1");
    if (!detector_->device().is_cpu())
      throw RangeError("replicas > 1 is CPU data parallelism; this model is on " + detector_->device().str());
    const auto& lo = loss_->options();
    if (lo.contrastive.weight > 0)
      throw RangeError("replicas > 1 cannot run the contrastive loss: its negatives come from the whole batch");
    if (lo.classification != "focal" || lo.regression == "ghmr")
      throw RangeError("replicas > 1 needs losses without batch statistics (GHM's bin counts are per batch): use classification 'focal' and a regression other than 'ghmr'");
    if (lo.focal.variant == "logits" && lo.focal.normalize == "batch")
      throw RangeError("replicas > 1 needs per-image normalisation: focal normalize 'batch' would differ per chunk");
    torch::NoGradGuard noGrad;
    for (int64_t r = 1; r < training.replicas; ++r) {
      RetinaNet replica(retina_->net()->config());
      replica->to(detector_->device());
      replicas_.push_back(replica);
      replicaLosses_.push_back(std::make_unique<RetinaLoss>(lo));
    }
  }
  // the update queued before the losses are read: the fused SGD on one device, one learning rate,
  // nothing that must know of a skip on the host before the next step (EMA count, replicas, other ranks)
  const bool queueable = o.type == "sgd" && !training.group && training.replicas == 1 && ema_.empty() && o.backboneLrMultiplier == 1.0;
  const char* forced = std::getenv("ONESTAGE_TEST_QUEUED_UPDATE");
  queuedUpdate_ = queueable && (update_ == UpdateImpl::Fused || (forced && *forced && update_ != UpdateImpl::Loop));
  if (update_ == UpdateImpl::Fused && o.type == "sgd") lrTensor_ = torch::full({}, o.lr, torch::TensorOptions(detector_->device()).dtype(torch::kFloat32));
}

LossParts TrainingSession::forwardBackwardParallel(const torch::Tensor& images, const torch::Tensor& annotations) {
  auto& net = retina_->net();
  const int64_t B = images.size(0);
  const auto xs = images.chunk(static_cast<int64_t>(replicas_.size()) + 1, 0);
  const auto as = annotations.chunk(static_cast<int64_t>(replicas_.size()) + 1, 0);
  const size_t used = xs.size();
  {
    // the replicas start each step as copies of the model (parameters and buffers)
    torch::NoGradGuard noGrad;
    const auto params = net->parameters();
    const auto buffers = net->buffers();
    for (size_t r = 0; r + 1 < used; ++r) {
      auto rp = replicas_[r]->parameters();
      auto rb = replicas_[r]->buffers();
      for (size_t i = 0; i < params.size(); ++i) {
        rp[i].copy_(params[i]);
        if (rp[i].grad().defined()) rp[i].mutable_grad().zero_();
      }
      for (size_t i = 0; i < buffers.size(); ++i) rb[i].copy_(buffers[i]);
      replicas_[r]->train(net->is_training());
    }
  }
  std::vector<LossParts> parts(used);
  std::vector<std::exception_ptr> errors(used);
  // the cores split between the replicas (each would otherwise run as many threads as there are cores)
  const int share = std::max(1, at::get_num_threads() / static_cast<int>(used));
  auto work = [&](size_t r) {
    const ThreadShare threads(share);
    try {
      RetinaNet& model = r == 0 ? net : replicas_[r - 1];
      RetinaLoss& loss = r == 0 ? *loss_ : *replicaLosses_[r - 1];
      const auto out = model->forward(xs[r]);
      std::vector<int64_t> levels;
      for (const auto& p : out.pyramid) levels.push_back(p.size(2) * p.size(3) * model->config().anchors.anchorsPerLocation());
      auto lp = loss.forward(out.classification.to(torch::kFloat), out.regression.to(torch::kFloat), out.anchors, as[r], levels);
      const double share = static_cast<double>(xs[r].size(0)) / static_cast<double>(B);
      lp.cls = lp.cls * share;
      lp.reg = lp.reg * share;
      (lp.cls + lp.reg).backward();
      parts[r] = lp;
    } catch (...) {
      errors[r] = std::current_exception();
    }
  };
  std::vector<std::thread> threads;
  for (size_t r = 1; r < used; ++r) threads.emplace_back(work, r);
  work(0);
  for (auto& t : threads) t.join();
  for (const auto& e : errors)
    if (e) std::rethrow_exception(e);
  // gradients of the replicas summed into the model's, in a fixed order (deterministic)
  torch::NoGradGuard noGrad;
  auto params = net->parameters();
  for (size_t r = 0; r + 1 < used; ++r) {
    const auto rp = replicas_[r]->parameters();
    for (size_t i = 0; i < params.size(); ++i) {
      if (!rp[i].grad().defined()) continue;
      if (params[i].grad().defined())
        params[i].mutable_grad().add_(rp[i].grad());
      else
        params[i].mutable_grad() = rp[i].grad().clone();
    }
  }
  LossParts total = parts[0];
  total.cls = total.cls.detach();
  total.reg = total.reg.detach();
  for (size_t r = 1; r < used; ++r) {
    total.cls = total.cls + parts[r].cls.detach();
    total.reg = total.reg + parts[r].reg.detach();
  }
  return total;
}

std::vector<torch::Tensor> TrainingSession::emaTargets() {
  std::vector<torch::Tensor> out;
  for (const auto& p : detector_->module().parameters()) out.push_back(p);
  for (const auto& b : detector_->module().buffers()) out.push_back(b);
  return out;
}

void TrainingSession::updateEma() {
  if (ema_.empty()) return;
  ++emaUpdates_;
  const double d = training_.emaDecay * (1.0 - std::exp(-static_cast<double>(emaUpdates_) / training_.emaTau));
  const auto targets = emaTargets();
  for (size_t i = 0; i < ema_.size(); ++i)
    if (ema_[i].device() != targets[i].device()) ema_[i] = ema_[i].to(targets[i].device());
  emaUpdate(ema_, targets, d);
}

void TrainingSession::swapEma() {
  if (ema_.empty()) return;
  std::lock_guard<std::mutex> lock(detector_->mutex());
  torch::NoGradGuard noGrad;
  const auto targets = emaTargets();
  for (size_t i = 0; i < ema_.size(); ++i) {
    auto held = targets[i].detach().clone();
    targets[i].detach().copy_(ema_[i]);
    ema_[i] = held;
  }
}

namespace {

/// The optimizer's state of parameter p (LibTorch keys it by the tensor's implementation: a string of
/// the pointer in 1.x, the pointer itself in 2.x), created by `make` when absent.
template <class State, class Map, class Make>
State& paramState(Map& states, const torch::Tensor& p, Make make) {
  using Key = typename std::decay_t<Map>::key_type;
  Key key;
  if constexpr (std::is_same_v<Key, std::string>) {
    std::ostringstream text;  // c10::guts::to_string of the pointer, as LibTorch 1.x writes the key
    text << static_cast<const void*>(p.unsafeGetTensorImpl());
    key = text.str();
  } else
    key = p.unsafeGetTensorImpl();
  auto it = states.find(key);
  if (it == states.end()) it = states.emplace(key, make()).first;
  return static_cast<State&>(*it->second);
}

}  // namespace

void TrainingSession::applyUpdate(const torch::Tensor& skip) {
  if (update_ == UpdateImpl::Loop) {
    optimizer_->step();
    return;
  }
  torch::NoGradGuard noGrad;
  for (auto& group : optimizer_->param_groups()) {
    std::vector<torch::Tensor> params, grads;
    for (const auto& p : group.params())
      if (p.grad().defined()) {
        params.push_back(p);
        grads.push_back(p.grad());
      }
    auto& states = optimizer_->state();
    const double lr = group.options().get_lr();  // this step's (× the backbone multiplier in group 1)
    if (options_.type == "adamw") {
      std::vector<torch::Tensor> m, v;
      std::vector<int64_t> steps;
      for (const auto& p : params) {
        auto& s = paramState<torch::optim::AdamWParamState>(states, p, [&p] {
          auto fresh = std::make_unique<torch::optim::AdamWParamState>();
          fresh->step(0);
          fresh->exp_avg(torch::zeros_like(p, at::MemoryFormat::Preserve));
          fresh->exp_avg_sq(torch::zeros_like(p, at::MemoryFormat::Preserve));
          return fresh;
        });
        s.step(s.step() + 1);
        m.push_back(s.exp_avg());
        v.push_back(s.exp_avg_sq());
        steps.push_back(s.step());
      }
      adamwUpdate(params, grads, m, v, steps, {lr, options_.beta1, options_.beta2, options_.eps, options_.weightDecay},
                  update_ == UpdateImpl::Fused);
    } else {
      // LibTorch keeps SGD state only with momentum (the buffer)
      const bool momentum = options_.momentum != 0;
      std::vector<torch::Tensor> buffers(params.size());
      std::vector<torch::optim::SGDParamState*> held(params.size(), nullptr);
      if (momentum)
        for (size_t i = 0; i < params.size(); ++i) {
          auto& s = paramState<torch::optim::SGDParamState>(states, params[i], [] { return std::make_unique<torch::optim::SGDParamState>(); });
          held[i] = &s;
          buffers[i] = s.momentum_buffer();
        }
      const SgdHyper h{lr, options_.momentum, options_.weightDecay, options_.nesterov};
      if (skip.defined()) {
        sgdUpdateUnlessSkipped(params, grads, buffers, h, lrTensor_, skip);  // queued: one group, lrTensor_ holds its rate
      } else if (update_ == UpdateImpl::Fused) {
        // read first and found finite: the fused kernel, never skipped, at this group's rate
        const auto options = lrTensor_.options();
        sgdUpdateUnlessSkipped(params, grads, buffers, h, torch::full({}, lr, options), torch::zeros({}, options));
      } else {
        sgdUpdate(params, grads, buffers, h);
      }
      for (size_t i = 0; momentum && i < params.size(); ++i) held[i]->momentum_buffer(buffers[i]);
    }
  }
}

StepResult TrainingSession::step(const torch::Tensor& images, const torch::Tensor& annotations, double lr, const torch::Tensor& views,
                                 int64_t epoch, std::optional<uint64_t> ticket) {
  QueuedRead queued;
  StepResult r;
  {
    const StepTurns::Turn turn(turns_, ticket ? *ticket : turns_.take());
    if (!(lr > 0) || !std::isfinite(lr)) throw RangeError("lr must be a positive finite number");
    std::lock_guard<std::mutex> lock(detector_->mutex());
    const c10::DeviceGuard guard(detector_->device());
    {
      auto& groups = optimizer_->param_groups();
      for (size_t g = 0; g < groups.size(); ++g) groups[g].options().set_lr(g == 1 ? lr * options_.backboneLrMultiplier : lr);
    }
    detector_->setTraining(true);
    // CUDA steps on the model's own thread (cuDNN's handles and benchmark results are per thread;
    // core/device_thread.h), CPU steps where they are called
    r = detector_->onDeviceThread([&] {
      // the fused kernel (and a graph holding it) reads this step's rate on the device: written behind
      // the last step's work on the stream, so a replay still reading the last rate is never overtaken
      if (lrTensor_.defined()) lrTensor_.fill_(lr);
      return graphs_ && !graphs_->disabled ? graphStep(images, annotations, views, epoch, queued) : eagerStep(images, annotations, views, epoch, queued);
    });
  }
  // the turn is served and the model free: with the update queued on the device the next step is
  // queued behind this one while its losses come to the host
  if (queued.values.defined()) readQueued(queued, r);
  return r;
}

StepResult TrainingSession::eagerStep(const torch::Tensor& images, const torch::Tensor& annotations, const torch::Tensor& views, int64_t epoch,
                                      QueuedRead& q) {
  const auto x = images.to(detector_->device());
  const auto ann = annotations.to(detector_->device());
  if (training_.group && !synchronised_) {
    // every rank continues from rank 0's weights (parameters, buffers, the projection head, the EMA
    // weights): done at the first step, after any checkpoint was loaded, off the JavaScript thread
    std::vector<torch::Tensor> state = emaTargets();
    if (projection_)
      for (const auto& p : projection_->parameters()) state.push_back(p);
    for (const auto& e : ema_) state.push_back(e);
    training_.group->broadcastInPlace(state, 0, "broadcast of rank 0's weights");
    synchronised_ = true;
  }
  optimizer_->zero_grad();
  const auto named = forwardBackward(x, ann, views, epoch);
  std::vector<std::string> names;
  for (const auto& entry : named) names.push_back(entry.first);
  StepResult r;
  if (queuedUpdate_) {
    queueUpdate(names, stackLosses(named, clipGradients()), q);
    return r;
  }
  std::vector<double> v;
  finishStep(named, v, r);
  fillLosses(names, v, r);
  return r;
}

namespace {

/// 1 (float32 device scalar) when a loss or the gradient norm in `stacked` is not finite, else 0.
torch::Tensor skipFlag(const torch::Tensor& stacked) { return torch::isfinite(stacked).all().logical_not().to(torch::kFloat32); }

}  // namespace

void TrainingSession::queueUpdate(const std::vector<std::string>& names, const torch::Tensor& stacked, QueuedRead& q) {
  applyUpdate(skipFlag(stacked));
  q.names = names;
  copyToHost(stacked, q);
}

void TrainingSession::copyToHost(const torch::Tensor& stacked, QueuedRead& q) {
#ifdef ONESTAGE_WITH_CUDA
  if (stacked.is_cuda()) {
    // page-locked: the copy runs behind the step on its stream while the host goes on
    q.values = stacked.to(torch::TensorOptions().device(torch::kCPU), /*non_blocking=*/true);
    auto landed = std::make_shared<at::cuda::CUDAEvent>();
    landed->record(c10::cuda::getCurrentCUDAStream(stacked.device().index()));
    q.wait = [landed] { landed->synchronize(); };
    return;
  }
#endif
  q.values = stacked;
}

void TrainingSession::readQueued(QueuedRead& q, StepResult& r) {
  {
    // the wait and the page-locked copy's release are CUDA calls: never during another thread's capture
    const CudaWorkScope work(detector_->device().is_cuda());
    if (q.wait) q.wait();
    std::vector<double> v;
    double norm = 0;
    const bool finite = readLosses(q.names, q.values, v, norm, r.reason);
    judgeStep(finite, norm, r);
    fillLosses(q.names, v, r);
    q = QueuedRead{};
  }
  r.updateQueued = true;
}

void TrainingSession::ensureMomentumBuffers() {
  if (options_.type != "sgd" || options_.momentum == 0) return;
  torch::NoGradGuard noGrad;
  auto& states = optimizer_->state();
  for (const auto& p : params_) {
    auto& s = paramState<torch::optim::SGDParamState>(states, p, [] { return std::make_unique<torch::optim::SGDParamState>(); });
    if (!s.momentum_buffer().defined()) s.momentum_buffer(torch::zeros_like(p, at::MemoryFormat::Preserve));
  }
}

torch::Tensor TrainingSession::stackLosses(const std::vector<std::pair<std::string, torch::Tensor>>& named, const torch::Tensor& gradNorm) {
  std::vector<torch::Tensor> flat;
  for (const auto& [name, t] : named) flat.push_back(t.detach().reshape({}).to(torch::kFloat64));
  auto stacked = torch::stack(flat);
  // under data parallelism the means over the ranks: a non-finite loss anywhere skips the step everywhere
  if (training_.group) stacked = training_.group->mean(stacked, "all-reduce of the step's losses");
  // the norm of the averaged gradients is the same on every rank
  return torch::cat({stacked, gradNorm.detach().reshape({1}).to(stacked.device(), torch::kFloat64)});
}

bool TrainingSession::readLosses(const std::vector<std::string>& names, const torch::Tensor& stacked, std::vector<double>& values, double& norm,
                                 std::string& reason) {
  // one host synchronisation per step, for the values reported and the finiteness checks
  const auto host = stacked.cpu();
  values.assign(host.data_ptr<double>(), host.data_ptr<double>() + names.size());
  norm = host.data_ptr<double>()[names.size()];
  bool finite = true;
  for (double v : values) finite = finite && std::isfinite(v);
  if (finite) return true;
  reason = "non-finite loss (";
  for (size_t i = 0; i < names.size(); ++i) reason += (i ? ", " : "") + names[i] + " " + std::to_string(values[i]);
  reason += training_.group ? ", means over the ranks)" : ")";
  return false;
}

void TrainingSession::backward(const torch::Tensor& loss) {
  if (!buckets_) {
    loss.backward();
    return;
  }
  buckets_->prepare();
  try {
    loss.backward();
  } catch (...) {
    buckets_->reset();
    throw;
  }
  buckets_->finish();
}

torch::Tensor TrainingSession::clipGradients() {
  std::vector<torch::Tensor> grads;
  for (const auto& p : params_)
    if (p.grad().defined()) grads.push_back(p.grad());
  const double maxNorm = options_.clipGradNorm > 0 ? options_.clipGradNorm : std::numeric_limits<double>::infinity();
  return grads.empty() ? torch::zeros({}, torch::TensorOptions(detector_->device())) : clipGradNorm(grads, maxNorm);
}

void TrainingSession::judgeStep(bool finiteLoss, double hostNorm, StepResult& r) {
  r.skipped = !finiteLoss;
  if (finiteLoss) {
    r.gradNorm = hostNorm;
    if (!std::isfinite(hostNorm)) {
      r.skipped = true;
      r.reason = "non-finite gradient norm";
    }
  }
}

void TrainingSession::concludeStep(bool finiteLoss, double hostNorm, StepResult& r) {
  judgeStep(finiteLoss, hostNorm, r);
  if (r.skipped) {
    optimizer_->zero_grad();
    for (auto& replica : replicas_) replica->zero_grad();
    return;
  }
  applyUpdate();
  updateEma();
}

void TrainingSession::finishStep(const std::vector<std::pair<std::string, torch::Tensor>>& named, std::vector<double>& values, StepResult& r) {
  const auto norm = clipGradients();
  std::vector<std::string> names;
  for (const auto& [name, t] : named) names.push_back(name);
  double hostNorm = 0;
  const bool finiteLoss = readLosses(names, stackLosses(named, norm), values, hostNorm, r.reason);
  concludeStep(finiteLoss, hostNorm, r);
}

void TrainingSession::fillLosses(const std::vector<std::string>& names, const std::vector<double>& v, StepResult& r) const {
  if (retina_) {
    r.cls = v[0];
    r.reg = v[1];
    r.contrastive = v.size() > 2 ? v[2] : 0.0;
    r.total = r.cls + r.reg + r.contrastive;
    return;
  }
  // NanoDet-Plus: qfl, bbox, dfl of the main head, then those of the AGM's head (when it has one)
  const bool aux = v.size() > 3;
  for (size_t i = 0; i < names.size(); ++i) r.components.emplace_back(names[i], v[i]);
  r.cls = v[0] + (aux ? v[3] : 0.0);
  r.reg = v[1] + v[2] + (aux ? v[4] + v[5] : 0.0);
  r.total = r.cls + r.reg;
}

std::vector<std::pair<std::string, torch::Tensor>> TrainingSession::forwardBackward(const torch::Tensor& x, const torch::Tensor& ann,
                                                                                     const torch::Tensor& views, int64_t epoch) {
  return retina_ ? forwardBackwardRetinaNet(x, ann, views) : forwardBackwardNanoDetPlus(x, ann, epoch);
}

std::vector<std::pair<std::string, torch::Tensor>> TrainingSession::forwardBackwardRetinaNet(const torch::Tensor& x, const torch::Tensor& ann,
                                                                                             const torch::Tensor& views) {
  auto& net = retina_->net();
  const auto& ct = loss_->options().contrastive;
  const bool contrastive = ct.weight > 0;
  if (contrastive && (!views.defined() || views.sizes() != x.sizes()))
    throw RangeError("the contrastive loss needs the second view of the batch (a loader with views: 2), of the images' shape");
  auto named = [contrastive](const LossParts& parts, const torch::Tensor& extra) {
    std::vector<std::pair<std::string, torch::Tensor>> out{{"cls", parts.cls}, {"reg", parts.reg}};
    if (contrastive) out.emplace_back("contrastive", extra);
    return out;
  };
  const auto zero = torch::zeros({}, x.options());
  if (!replicas_.empty() && x.size(0) > 1) {
    const auto parts = forwardBackwardParallel(x, ann);
    if (buckets_) buckets_->allreduceGradients();
    return named(parts, zero);
  }
  RetinaNetOutput out, viewOut;
  {
    const Bf16Forward bf16(*net, detector_->device(), training_.amp, stepPurpose(training_));
    out = net->forward(x);
    if (contrastive) viewOut = net->forward(views.to(detector_->device()));
  }
  std::vector<int64_t> levels;
  for (const auto& p : out.pyramid) levels.push_back(p.size(2) * p.size(3) * net->config().anchors.anchorsPerLocation());
  // losses in float32 (a no-op without amp)
  auto parts = loss_->forward(out.classification.to(torch::kFloat), out.regression.to(torch::kFloat), out.anchors, ann, levels);
  torch::Tensor extra = zero;
  if (contrastive) {
    if (ct.detectOnViews) {
      const auto more = loss_->forward(viewOut.classification.to(torch::kFloat), viewOut.regression.to(torch::kFloat), viewOut.anchors, ann, levels);
      parts.cls = parts.cls + more.cls;
      parts.reg = parts.reg + more.reg;
    }
    // the maps as they are (bf16 under amp, channels-last): the RoIAlign reads them in place, in float32
    const auto& f1 = out.pyramid;
    const auto& f2 = viewOut.pyramid;
    Projection project;
    if (projection_) project = [this](const torch::Tensor& t) { return projection_->forward(t); };
    extra = contrastiveLoss(f1, f2, ann, x.size(2), x.size(3), ct.loss, project).loss * ct.weight;
  }
  // backward before the losses are read: a non-finite loss gives non-finite gradients, dropped unused
  backward(parts.cls + parts.reg + extra);
  return named(parts, extra);
}

bool TrainingSession::testCaptureFailure() const {
  const char* v = std::getenv("ONESTAGE_TEST_CAPTURE_FAILURE");
  if (!v || !*v) return false;
  const std::string value(v);
  if (value.rfind("rank:", 0) != 0) return true;
  return training_.group && std::to_string(training_.group->rank()) == value.substr(5);
}

StepResult TrainingSession::graphStep(const torch::Tensor& images, const torch::Tensor& annotations, const torch::Tensor& views, int64_t epoch,
                                      QueuedRead& q) {
#ifdef ONESTAGE_WITH_CUDA
  auto& g = *graphs_;
  // the side stream follows the work queued so far on the caller's stream (the inputs), and the caller's
  // stream follows the step (the weights it updates)
  const auto outer = c10::cuda::getCurrentCUDAStream(detector_->device().index());
  at::cuda::CUDAEvent ready, done;
  ready.record(outer);
  ready.block(g.stream);
  StepResult r;
  {
    const c10::cuda::CUDAStreamGuard onSide(g.stream);
    // NanoDet-Plus's AGM is detached from detachEpoch on: another graph
    const int64_t detached = nanodet_ && epoch >= nanodetLoss_.detachEpoch ? 1 : 0;
    std::vector<int64_t> key{images.size(0), images.size(1), images.size(2), images.size(3), views.defined() ? 1 : 0, detached};
    int64_t boxes = annotations.size(1);
    if (training_.group) {
      // a captured NCCL collective is captured, and its graph replayed, by every rank together: the
      // decisions below are made on every rank's shapes (the key: all ranks' in rank order) and on the
      // largest box count, so they are the same everywhere
      auto mine = key;
      mine.push_back(boxes);
      const auto all = training_.group->allGather(mine, "all-gather of the batch shapes (CUDA graph decision)");
      const size_t width = mine.size();
      key.clear();
      boxes = 0;
      for (size_t r = 0; r < all.size() / width; ++r) {
        key.insert(key.end(), all.begin() + static_cast<std::ptrdiff_t>(r * width), all.begin() + static_cast<std::ptrdiff_t>(r * width + width - 1));
        boxes = std::max(boxes, all[r * width + width - 1]);
      }
    }
    auto* step = g.find(key, boxes);
    if (!step) {
      // capacity: the next power of two, at least 8 rows (padding rows change no loss)
      int64_t capacity = 8;
      while (capacity < boxes) capacity *= 2;
      auto seenKey = key;
      seenKey.push_back(capacity);
      // a new shape is captured while the cache has room; a larger capacity replaces its shape's graph
      bool room = g.captured.size() < kMaxGraphs;
      for (const auto& c : g.captured) room = room || c.key == key;
      if (!room || ++g.seen[seenKey] <= kGraphWarmupSteps) {
        r = eagerStep(images, annotations, views, epoch, q);
        r.graph = "eager";
      } else {
        std::string failure;
        try {
          captureStep(key, capacity, images, annotations, views, epoch);
        } catch (const std::exception& e) {
          failure = e.what();
        }
        if (training_.group) failure = agreeOnCapture(failure);
        if (failure.empty()) {
          g.seen.erase(seenKey);
          step = g.find(key, boxes);
          r.graph = "captured";
        } else {
          g.clear();
          for (auto& p : params_) p.mutable_grad() = torch::Tensor();
          if (!g.automatic) throw std::runtime_error(failure + "; train with cudaGraph false");
          // cudaGraph "auto": this step and every later one eagerly, and the caller is told once
          g.disabled = true;
          r = eagerStep(images, annotations, views, epoch, q);
          r.graph = "off";
          r.graphWarning = failure + "; training goes on without CUDA graphs";
        }
      }
    }
    if (step) {
      step->images.copy_(images);
      step->annotations.fill_(-1.0);
      step->annotations.narrow(1, 0, annotations.size(1)).copy_(annotations);
      if (views.defined()) step->views.copy_(views);
      step->graph->replay();
      if (training_.group) awaitReplay(g.stream);
      // the gradients live in the graphs' pool: the parameters get this graph's back (an eager step or
      // another graph in between has replaced them)
      for (size_t i = 0; i < params_.size(); ++i) params_[i].mutable_grad() = step->grads[i];
      if (queuedUpdate_) {
        // the update, and its skip, ran in the graph
        q.names = step->names;
        copyToHost(step->values, q);
      } else {
        std::vector<double> v;
        double norm = 0;
        const bool finite = readLosses(step->names, step->values, v, norm, r.reason);
        concludeStep(finite, norm, r);
        fillLosses(step->names, v, r);
      }
      if (r.graph == "off") r.graph = "replayed";
    }
  }
  done.record(g.stream);
  done.block(outer);
  return r;
#else
  (void)images;
  (void)annotations;
  (void)views;
  (void)epoch;
  (void)q;
  throw std::logic_error("cudaGraph without CUDA");
#endif
}

std::string TrainingSession::agreeOnCapture(const std::string& failure) {
  const auto failed = training_.group->allGather({failure.empty() ? 0 : 1}, "all-gather of the CUDA graph capture's outcome");
  if (!failure.empty()) return failure;
  std::string ranks;
  for (size_t r = 0; r < failed.size(); ++r)
    if (failed[r]) ranks += (ranks.empty() ? "" : ", ") + std::to_string(r);
  if (ranks.empty()) return "";
  return "cudaGraph: the training step could not be captured as a CUDA graph on rank " + ranks + " (every rank replays the same graphs, so none does)";
}

void TrainingSession::awaitReplay(const c10::Stream& stream) {
#ifdef ONESTAGE_WITH_CUDA
  // the replay's all-reduces wait on the device for every other rank, where no c10d timeout watches them
  at::cuda::CUDAEvent finished;
  finished.record(c10::cuda::CUDAStream(stream));
  const auto& group = *training_.group;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(group.options().timeoutMs);
  while (!finished.query()) {
    if (std::chrono::steady_clock::now() > deadline) {
      // the replay's all-reduces would spin on the device for ever: end them, so that the process can exit
      training_.group->abort();
      throw std::runtime_error("data-parallel training step (a CUDA graph replay with its all-reduces; rank " + std::to_string(group.rank()) + " of " +
                               std::to_string(group.worldSize()) + ", " + group.backend() + ") timed out after " +
                               std::to_string(group.options().timeoutMs) + " ms: another rank stopped or left");
    }
    std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
#else
  (void)stream;
#endif
}

void TrainingSession::captureStep(const std::vector<int64_t>& key, int64_t capacity, const torch::Tensor& images, const torch::Tensor& annotations,
                                  const torch::Tensor& views, int64_t epoch) {
#ifdef ONESTAGE_WITH_CUDA
  auto& g = *graphs_;
  const auto device = detector_->device();
  // a smaller capacity of this shape goes first (its gradients are the only memory it holds alone)
  for (auto it = g.captured.begin(); it != g.captured.end(); ++it)
    if (it->key == key) {
      g.captured.erase(it);
      break;
    }
  Graphs::Captured c;
  c.key = key;
  c.boxes = capacity;
  const auto f32 = torch::TensorOptions().device(device).dtype(torch::kFloat32);
  c.images = torch::empty(images.sizes(), f32);
  c.annotations = torch::full({images.size(0), capacity, annotations.size(2)}, -1.0, f32);
  c.views = views.defined() ? torch::empty(views.sizes(), f32) : torch::Tensor();
  // no gradients before the capture: the backward creates them inside the graph's memory pool, and every
  // replay writes them anew (an existing gradient would be accumulated into, replay after replay)
  for (auto& p : params_) p.mutable_grad() = torch::Tensor();
  // a queued update in the graph updates the momentum buffers in place: they must exist before (a
  // buffer created inside would be zeroed again at every replay)
  if (queuedUpdate_) ensureMomentumBuffers();
  // no other CUDA job of the library (uploads, other models' steps, transfers) runs meanwhile: a wait
  // on the device or a page-locked allocation there would end the capture, or fail itself
  const CaptureScope capturing;
  g.stream.synchronize();
  c10::cuda::CUDACachingAllocator::emptyCache();
  if (g.captured.empty()) g.pool = {0, 0};  // a fresh pool when no graph holds the last one; later graphs share it
  std::unique_ptr<at::cuda::CUDAGraph> graph;
  try {
    graph = captureGraph(
        g.pool,
        [&] {
          // a test of the failure path: a device synchronisation, which no capture allows ("rank:N": on
          // that rank of a process group only)
          if (testCaptureFailure()) torch::cuda::synchronize();
          const auto named = forwardBackward(c.images, c.annotations, c.views, epoch);
          c.values = stackLosses(named, clipGradients());
          for (const auto& entry : named) c.names.push_back(entry.first);
          if (queuedUpdate_) applyUpdate(skipFlag(c.values));
        },
        "cudaGraph: the training step could not be captured as a CUDA graph");
  } catch (...) {
    for (auto& p : params_) p.mutable_grad() = torch::Tensor();
    throw;
  }
  if (g.captured.empty()) g.pool = graph->pool();
  c.graph = std::move(graph);
  for (const auto& p : params_) c.grads.push_back(p.grad());
  g.captured.push_back(std::move(c));
#else
  (void)key;
  (void)capacity;
  (void)images;
  (void)annotations;
  (void)views;
  (void)epoch;
#endif
}

std::vector<std::pair<std::string, torch::Tensor>> TrainingSession::forwardBackwardNanoDetPlus(const torch::Tensor& x, const torch::Tensor& ann,
                                                                                                int64_t epoch) {
  auto& net = nanodet_->net();
  const auto& cfg = net->config();
  const bool detach = epoch >= nanodetLoss_.detachEpoch;
  NanoDetPlusOutput out;
  {
    const Bf16Forward bf16(*net, detector_->device(), training_.amp, stepPurpose(training_));
    out = net->forwardTrain(x, detach);
  }
  const auto preds = out.preds.to(torch::kFloat);
  const auto aux = out.auxPreds.defined() ? out.auxPreds.to(torch::kFloat) : torch::Tensor();
  const bool assignWithMain = nanodetLoss_.assignBy == "aux-until-detach" && detach;
  MeanReducer reduce;
  if (training_.group) {
    auto group = training_.group;
    reduce = [group](const torch::Tensor& t) { return group->mean(t, "all-reduce of a NanoDet-Plus loss normaliser"); };
  }
  const auto parts = nanodetPlusLoss(preds, aux, out.priors, ann, cfg.numClasses, cfg.regMax, nanodetLoss_, assignWithMain, reduce);
  std::vector<std::pair<std::string, torch::Tensor>> named{{"qfl", parts.main.qfl}, {"bbox", parts.main.bbox}, {"dfl", parts.main.dfl}};
  if (aux.defined()) {
    named.emplace_back("auxQfl", parts.aux.qfl);
    named.emplace_back("auxBbox", parts.aux.bbox);
    named.emplace_back("auxDfl", parts.aux.dfl);
  }
  backward(parts.total());
  return named;
}

namespace {

void writeGhm(torch::serialize::OutputArchive& archive, const std::string& name, const std::vector<GhmState>& states) {
  archive.write(name + "/count", torch::tensor(static_cast<int64_t>(states.size())));
  for (size_t i = 0; i < states.size(); ++i)
    if (states[i].accSum.defined()) archive.write(name + "/" + std::to_string(i), states[i].accSum.cpu());
}

void readGhm(torch::serialize::InputArchive& archive, const std::string& name, std::vector<GhmState>& states,
             const GhmOptions& opts, const torch::Device& device) {
  torch::Tensor count;
  archive.read(name + "/count", count);
  states.assign(static_cast<size_t>(count.item<int64_t>()), GhmState{});
  for (size_t i = 0; i < states.size(); ++i) {
    torch::Tensor acc;
    if (!archive.try_read(name + "/" + std::to_string(i), acc)) continue;
    if (acc.dim() != 1 || acc.size(0) != opts.bins)
      throw std::runtime_error(name + " momentum state has " + std::to_string(acc.numel()) + " bins, the loss has " + std::to_string(opts.bins));
    states[i].accSum = acc.to(device, torch::kFloat64);
  }
}

}  // namespace

void TrainingSession::saveState(const std::string& path) {
  std::lock_guard<std::mutex> lock(detector_->mutex());
  std::random_device rd;
  const std::string tmp = path + ".tmp-" + std::to_string(rd());
  torch::serialize::OutputArchive archive;
  archive.write("format/" + std::string(kStateFormat), torch::tensor(1));
  archive.write("optimizer/type/" + options_.type, torch::tensor(1));
  torch::serialize::OutputArchive optimizer;
  optimizer_->save(optimizer);
  archive.write("optimizer", optimizer);
  if (loss_) {
    std::lock_guard<std::mutex> lossLock(loss_->mutex());
    writeGhm(archive, "ghmc", loss_->ghmcStates());
    writeGhm(archive, "ghmr", loss_->ghmrStates());
  }
  if (projection_) {
    torch::serialize::OutputArchive head;
    projection_->save(head);
    archive.write("projection", head);
  }
  archive.write("ema/count", torch::tensor(static_cast<int64_t>(ema_.size())));
  archive.write("ema/updates", torch::tensor(emaUpdates_));
  for (size_t i = 0; i < ema_.size(); ++i) archive.write("ema/" + std::to_string(i), ema_[i].cpu());
  archive.save_to(tmp);
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw std::runtime_error("cannot write " + path);
  }
}

void TrainingSession::loadState(const std::string& path) {
  std::lock_guard<std::mutex> lock(detector_->mutex());
  const auto device = detector_->device();
  try {
    torch::serialize::InputArchive archive;
    archive.load_from(path, device);
    torch::Tensor flag;
    if (!archive.try_read("format/" + std::string(kStateFormat), flag))
      throw std::runtime_error("not a training state written by this version of onestage");
    if (!archive.try_read("optimizer/type/" + options_.type, flag))
      throw std::runtime_error("written with another optimizer than '" + options_.type + "'");
    torch::Tensor emaCount, emaUpdates;
    archive.read("ema/count", emaCount);
    archive.read("ema/updates", emaUpdates);
    if (static_cast<size_t>(emaCount.item<int64_t>()) != ema_.size())
      throw std::runtime_error(ema_.empty() ? "written with EMA weights, this session has none" : "written without EMA weights, this session has EMA on");
    // read and check everything before the optimizer, the last thing changed
    std::vector<torch::Tensor> ema(ema_.size());
    const auto targets = emaTargets();
    for (size_t i = 0; i < ema.size(); ++i) {
      archive.read("ema/" + std::to_string(i), ema[i]);
      if (ema[i].sizes() != targets[i].sizes()) throw std::runtime_error("EMA weight " + std::to_string(i) + " has another shape than the model's");
      ema[i] = ema[i].to(device);
    }
    if (projection_) {
      torch::serialize::InputArchive head;
      if (!archive.try_read("projection", head)) throw std::runtime_error("written without the contrastive projection head this session has");
      projection_->load(head);
    }
    std::vector<GhmState> ghmc, ghmr;
    if (loss_) {
      readGhm(archive, "ghmc", ghmc, loss_->options().ghmc, device);
      readGhm(archive, "ghmr", ghmr, loss_->options().ghmr, device);
    }
    torch::serialize::InputArchive optimizer;
    archive.read("optimizer", optimizer);
    // LibTorch checks the parameter count; the shapes were checked with the weights (strict load)
    optimizer_->load(optimizer);
    ema_ = std::move(ema);
    emaUpdates_ = emaUpdates.item<int64_t>();
    if (loss_) {
      std::lock_guard<std::mutex> lossLock(loss_->mutex());
      loss_->ghmcStates() = std::move(ghmc);
      loss_->ghmrStates() = std::move(ghmr);
    }
#ifdef ONESTAGE_WITH_CUDA
    // the graphs read and update the GHM states they were captured with: capture again
    if (graphs_) graphs_->clear();
#endif
  } catch (const c10::Error& e) {
    const std::string msg = e.what_without_backtrace();
    throw std::runtime_error(path + ": not a training state of this model and optimizer (" + msg.substr(0, msg.find('\n')) + ")");
  } catch (const std::runtime_error& e) {
    throw std::runtime_error(path + ": " + e.what());
  }
}

}  // namespace onestage
