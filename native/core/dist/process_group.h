// Data-parallel communication on PyTorch's c10d: a TCPStore rendezvous (MASTER_ADDR/MASTER_PORT, the
// store server in rank 0, or a launcher's agent store as under torchrun) and a process group —
// ProcessGroupGloo for CPU tensors, ProcessGroupNCCL for CUDA tensors. The c10d types stay inside
// process_group.cpp (their headers need Gloo's and NCCL's); the rest of onestage sees this interface.
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace onestage {

struct ProcessGroupOptions {
  std::string backend = "gloo";  // "gloo" (CPU tensors) | "nccl" (CUDA tensors)
  std::string masterAddr = "127.0.0.1";
  int64_t masterPort = 29500;
  int64_t rank = 0;
  int64_t worldSize = 1;
  /// Every rendezvous, collective and store read fails with an error after this long.
  int64_t timeoutMs = 300000;
  /// The store is served by a launcher's agent (torchrun: TORCHELASTIC_USE_AGENT_STORE): every rank
  /// connects as a client; otherwise rank 0 serves it.
  bool agentStore = false;
  /// Gloo: the network interface to use (GLOO_SOCKET_IFNAME); empty: loopback when the master address
  /// is a loopback address, else the address this host's name resolves to.
  std::string interface;
  /// NCCL: the CUDA device index of this rank.
  int64_t deviceIndex = 0;
};

/// A collective in flight. wait() blocks until it is done and throws its error (a peer that left, a
/// timeout) as a std::runtime_error naming the operation. While the calling thread's CUDA stream is
/// being captured into a CUDA graph, an NCCL collective's wait() is the stream's wait instead (recorded
/// into the graph; the host goes on).
class PendingCollective {
 public:
  virtual ~PendingCollective() = default;
  virtual void wait() = 0;
};

class ProcessGroup {
 public:
  /// Joins the group: blocks until every rank has connected (or the timeout passes).
  static std::shared_ptr<ProcessGroup> create(const ProcessGroupOptions& options);
  /// The backends this build has ("gloo", "nccl").
  static std::vector<std::string> availableBackends();
  virtual ~ProcessGroup() = default;

  int64_t rank() const { return options_.rank; }
  int64_t worldSize() const { return options_.worldSize; }
  const std::string& backend() const { return options_.backend; }
  const ProcessGroupOptions& options() const { return options_; }
  /// Where the group's tensors live: CPU for gloo, cuda:deviceIndex for nccl.
  torch::Device device() const;

  /// In-place sum over the ranks of one contiguous tensor on device(); asynchronous.
  virtual std::shared_ptr<PendingCollective> allreduceSum(const torch::Tensor& tensor, const std::string& what) = 0;
  /// In-place copy of rank `root`'s tensor to every rank; asynchronous.
  virtual std::shared_ptr<PendingCollective> broadcast(const torch::Tensor& tensor, int64_t root, const std::string& what) = 0;

  /// Synchronous helpers over any tensors (moved to device() and back; any dtype): the mean over the
  /// ranks, and rank 0's values on every rank (tensors of one dtype travel as one flat buffer).
  torch::Tensor mean(const torch::Tensor& tensor, const std::string& what);
  void broadcastInPlace(const std::vector<torch::Tensor>& tensors, int64_t root, const std::string& what);
  /// Ends this rank's communicators and every collective in flight on them (NCCL: ncclCommAbort,
  /// where the LibTorch version has it; otherwise nothing): after a collective that can no longer
  /// finish — a CUDA graph replay whose peers stopped — so that the process can exit. The group is not
  /// usable afterwards.
  virtual void abort() = 0;
  /// Every rank's `values` (of one length on every rank), concatenated in rank order: one all-reduce
  /// and a host read (synchronous).
  std::vector<int64_t> allGather(const std::vector<int64_t>& values, const std::string& what);
  /// Every rank waits here until all have arrived.
  void barrier(const std::string& what);

  // The rendezvous store, for small host-side payloads (evaluation results, flags).
  virtual void storeSet(const std::string& key, const std::vector<uint8_t>& value) = 0;
  /// Waits for the key (up to the timeout).
  virtual std::vector<uint8_t> storeGet(const std::string& key) = 0;
  virtual int64_t storeAdd(const std::string& key, int64_t delta) = 0;
  virtual bool storeDelete(const std::string& key) = 0;

 protected:
  explicit ProcessGroup(ProcessGroupOptions options) : options_(std::move(options)) {}
  ProcessGroupOptions options_;
};

}  // namespace onestage
