#include "core/dist/gradient_buckets.h"

#include <stdexcept>

#include "core/errors.h"

namespace onestage {

GradientBuckets::GradientBuckets(std::shared_ptr<ProcessGroup> group, std::vector<torch::Tensor> params, int64_t bucketBytes,
                                 int64_t firstBucketBytes)
    : group_(std::move(group)), params_(std::move(params)) {
  where_.resize(params_.size());
  // reverse registration order; a new bucket when the cap is reached or the dtype/device changes
  int64_t bytes = 0;
  for (size_t k = params_.size(); k-- > 0;) {
    const auto& p = params_[k];
    if (!p.is_floating_point()) throw std::logic_error("gradient buckets: parameter " + std::to_string(k) + " is not floating point");
    if (p.device() != group_->device())
      throw RangeError("data-parallel training with the " + group_->backend() + " backend needs the model on " + group_->device().str() +
                       "; it is on " + p.device().str() + (p.is_cuda() ? " (use the nccl backend for CUDA)" : " (use the gloo backend on the CPU)"));
    const int64_t cap = buckets_.size() == 1 ? firstBucketBytes : bucketBytes;
    const bool fresh = buckets_.empty() || bytes >= cap || params_[buckets_.back().params.front()].scalar_type() != p.scalar_type();
    if (fresh) {
      buckets_.emplace_back();
      bytes = 0;
    }
    auto& b = buckets_.back();
    where_[k] = {buckets_.size() - 1, b.params.size()};
    b.params.push_back(k);
    bytes += p.numel() * static_cast<int64_t>(p.element_size());
  }
  for (auto& b : buckets_) {
    int64_t n = 0;
    for (const size_t k : b.params) {
      b.offsets.push_back(n);
      n += params_[k].numel();
    }
    b.flat = torch::zeros({n}, params_[b.params.front()].options().requires_grad(false));
    b.ready.assign(b.params.size(), false);
  }
  for (size_t k = 0; k < params_.size(); ++k)
    hooks_.push_back(params_[k].register_hook([this, k](torch::Tensor grad) { onGradient(k, grad); }));
}

GradientBuckets::~GradientBuckets() {
  for (size_t k = 0; k < params_.size(); ++k) {
    try {
      params_[k].remove_hook(hooks_[k]);
    } catch (...) {
    }
  }
  for (auto& b : buckets_) {
    try {
      if (b.work) b.work->wait();
    } catch (...) {
    }
  }
}

void GradientBuckets::prepare() {
  std::lock_guard<std::mutex> lock(mutex_);
  for (auto& b : buckets_) {
    b.ready.assign(b.params.size(), false);
    b.pending = b.params.size();
    b.work.reset();
  }
  nextLaunch_ = 0;
  error_ = nullptr;
  armed_ = true;
}

void GradientBuckets::reset() {
  std::lock_guard<std::mutex> lock(mutex_);
  armed_ = false;
  for (auto& b : buckets_) {
    try {
      if (b.work) b.work->wait();  // a launched collective completes on every rank or fails
    } catch (...) {
    }
    b.work.reset();
  }
  nextLaunch_ = 0;
}

void GradientBuckets::onGradient(size_t param, const torch::Tensor& grad) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!armed_ || error_) return;
  try {
    const auto [bi, slot] = where_[param];
    auto& b = buckets_[bi];
    if (b.ready[slot]) throw std::logic_error("gradient buckets: a parameter received two gradients in one backward");
    torch::NoGradGuard noGrad;
    b.flat.narrow(0, b.offsets[slot], params_[param].numel()).view(params_[param].sizes()).copy_(grad);
    b.ready[slot] = true;
    --b.pending;
    launchReadyLocked();
  } catch (...) {
    error_ = std::current_exception();
  }
}

void GradientBuckets::launchLocked(size_t bi) {
  auto& b = buckets_[bi];
  b.work = group_->allreduceSum(b.flat, "all-reduce of gradient bucket " + std::to_string(bi + 1) + "/" + std::to_string(buckets_.size()));
}

void GradientBuckets::launchReadyLocked() {
  while (nextLaunch_ < buckets_.size() && buckets_[nextLaunch_].pending == 0) launchLocked(nextLaunch_++);
}

void GradientBuckets::finish() {
  std::unique_lock<std::mutex> lock(mutex_);
  if (!armed_) throw std::logic_error("gradient buckets: finish() without prepare()");
  armed_ = false;
  if (error_) std::rethrow_exception(error_);
  torch::NoGradGuard noGrad;
  // parameters without a gradient on this rank: zeros (the other ranks' gradients still count)
  for (size_t bi = nextLaunch_; bi < buckets_.size(); ++bi) {
    auto& b = buckets_[bi];
    for (size_t s = 0; s < b.params.size(); ++s)
      if (!b.ready[s]) b.flat.narrow(0, b.offsets[s], params_[b.params[s]].numel()).zero_();
    b.pending = 0;
  }
  launchReadyLocked();
  const double inv = 1.0 / static_cast<double>(group_->worldSize());
  for (auto& b : buckets_) {
    b.work->wait();
    b.work.reset();
    b.flat.mul_(inv);
    for (size_t s = 0; s < b.params.size(); ++s) {
      auto& p = params_[b.params[s]];
      const auto avg = b.flat.narrow(0, b.offsets[s], p.numel()).view(p.sizes());
      if (p.grad().defined())
        p.mutable_grad().copy_(avg);
      else
        p.mutable_grad() = avg.clone();
    }
  }
}

void GradientBuckets::allreduceGradients() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    torch::NoGradGuard noGrad;
    for (auto& b : buckets_) {
      for (size_t s = 0; s < b.params.size(); ++s) {
        const auto& p = params_[b.params[s]];
        auto slot = b.flat.narrow(0, b.offsets[s], p.numel());
        if (p.grad().defined())
          slot.copy_(p.grad().reshape({-1}));
        else
          slot.zero_();
      }
      b.ready.assign(b.params.size(), true);
      b.pending = 0;
    }
    nextLaunch_ = 0;
    error_ = nullptr;
    armed_ = true;
  }
  finish();
}

}  // namespace onestage
