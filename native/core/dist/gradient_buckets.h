// Gradient averaging for data-parallel training, DistributedDataParallel's way: the parameters are
// grouped into buckets (in reverse registration order, roughly the order backward produces their
// gradients; the first bucket small so communication starts early), a hook on each parameter copies
// its gradient into its bucket as soon as autograd has computed it, and a full bucket is all-reduced
// while backward goes on. Buckets are launched strictly in index order on every rank (collectives must
// match across ranks). After backward, finish() launches what is left — a parameter that received no
// gradient on this rank counts as zero, as with find_unused_parameters — waits, and writes the mean
// over the ranks into every parameter's .grad.
#pragma once
#include <torch/torch.h>

#include <memory>
#include <mutex>
#include <vector>

#include "core/dist/process_group.h"

namespace onestage {

class GradientBuckets {
 public:
  GradientBuckets(std::shared_ptr<ProcessGroup> group, std::vector<torch::Tensor> params, int64_t bucketBytes = 25 << 20,
                  int64_t firstBucketBytes = 1 << 20);
  ~GradientBuckets();
  GradientBuckets(const GradientBuckets&) = delete;
  GradientBuckets& operator=(const GradientBuckets&) = delete;

  /// Arms the hooks for the next backward (overlapped communication).
  void prepare();
  /// After backward: launches the remaining buckets, waits for all, writes the averaged gradients.
  void finish();
  /// Without hooks (gradients already complete in .grad, e.g. summed from CPU replicas): all buckets at once.
  void allreduceGradients();
  /// Drops a half-done round (after an error in backward) so the next prepare() starts clean.
  void reset();

  size_t bucketCount() const { return buckets_.size(); }

 private:
  struct Bucket {
    std::vector<size_t> params;   // indices into params_
    std::vector<int64_t> offsets; // of each parameter in flat
    torch::Tensor flat;
    std::vector<bool> ready;
    size_t pending = 0;
    std::shared_ptr<PendingCollective> work;
  };
  void onGradient(size_t param, const torch::Tensor& grad);
  void launchReadyLocked();
  void launchLocked(size_t bucket);

  std::shared_ptr<ProcessGroup> group_;
  std::vector<torch::Tensor> params_;
  std::vector<std::pair<size_t, size_t>> where_;  // param → (bucket, slot)
  std::vector<unsigned> hooks_;
  std::vector<Bucket> buckets_;
  std::mutex mutex_;
  bool armed_ = false;
  size_t nextLaunch_ = 0;
  std::exception_ptr error_;
};

}  // namespace onestage
