#include "core/dist/process_group.h"

#include <torch/version.h>

#include <chrono>
#include <stdexcept>
#include <type_traits>
#include <utility>

#include "core/errors.h"

#ifdef ONESTAGE_WITH_GLOO
#ifndef USE_C10D_GLOO
#define USE_C10D_GLOO
#endif
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif
#ifdef ONESTAGE_WITH_NCCL
#ifndef USE_C10D_NCCL
#define USE_C10D_NCCL
#endif
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/Work.hpp>

namespace onestage {

namespace {

std::string firstLine(const std::string& s) { return s.substr(0, s.find('\n')); }

std::string messageOf(const std::exception& e) {
  if (const auto* c10 = dynamic_cast<const c10::Error*>(&e)) return firstLine(c10->what_without_backtrace());
  return firstLine(e.what());
}

/// Whether this thread's current CUDA stream is being captured into a CUDA graph (NCCL builds).
bool capturingStream() {
#ifdef ONESTAGE_WITH_NCCL
  return c10::cuda::currentStreamCaptureStatusMayInitCtx() != c10::cuda::CaptureStatus::None;
#else
  return false;
#endif
}

class C10dCollective final : public PendingCollective {
 public:
  /// streamOrdered: an NCCL collective, which the current CUDA stream can wait for on the device.
  C10dCollective(c10::intrusive_ptr<c10d::Work> work, std::string what, std::chrono::milliseconds timeout, bool streamOrdered)
      : work_(std::move(work)), what_(std::move(what)), timeout_(timeout), streamOrdered_(streamOrdered) {}
  void wait() override {
    if (!work_) return;
    try {
      if (streamOrdered_ && capturingStream())
        // inside a CUDA graph capture (TrainingSession's data-parallel graphs): the capturing stream waits
        // for the NCCL stream, recorded into the graph; the host wait with a timeout would query an event
        // of the capture, which no capture allows (a replay is awaited with the timeout instead)
        work_->wait();
      else
        work_->wait(timeout_);
      work_.reset();
    } catch (const std::exception& e) {
      work_.reset();
      throw std::runtime_error(what_ + " failed: " + messageOf(e));
    }
  }

 private:
  c10::intrusive_ptr<c10d::Work> work_;
  std::string what_;
  std::chrono::milliseconds timeout_;
  bool streamOrdered_;
};

/// Whether the c10d backend has an abort() callable without arguments (ProcessGroupNCCL in LibTorch 2.x:
/// `void abort()` or `bool abort(optional<string> = nullopt)` depending on the version).
template <typename T, typename = void>
struct HasAbort : std::false_type {};
template <typename T>
struct HasAbort<T, std::void_t<decltype(std::declval<T&>().abort())>> : std::true_type {};

// Either c10d backend: ProcessGroupGloo and ProcessGroupNCCL have the same collective signatures (in
// LibTorch 1.13 as ProcessGroup subclasses, in 2.x as Backend subclasses).
template <typename Backend>
class C10dProcessGroup final : public ProcessGroup {
 public:
  C10dProcessGroup(ProcessGroupOptions o, c10::intrusive_ptr<c10d::Store> store, c10::intrusive_ptr<Backend> backend)
      : ProcessGroup(std::move(o)), store_(std::move(store)), backend_(std::move(backend)) {}
  ~C10dProcessGroup() override {
#if defined(ONESTAGE_WITH_NCCL) && TORCH_VERSION_MAJOR >= 2
    // what destroy_process_group() does for NCCL: its communicators are released in order
    if constexpr (std::is_same_v<Backend, c10d::ProcessGroupNCCL>) {
      try {
        backend_->shutdown();
      } catch (...) {
      }
    }
#endif
  }

  std::shared_ptr<PendingCollective> allreduceSum(const torch::Tensor& tensor, const std::string& what) override {
    check(tensor, what);
    std::vector<at::Tensor> list{tensor};
    c10d::AllreduceOptions opts;
    opts.reduceOp = c10d::ReduceOp::SUM;
    return launch([&] { return backend_->allreduce(list, opts); }, what);
  }

  std::shared_ptr<PendingCollective> broadcast(const torch::Tensor& tensor, int64_t root, const std::string& what) override {
    check(tensor, what);
    std::vector<at::Tensor> list{tensor};
    c10d::BroadcastOptions opts;
    opts.rootRank = root;
    opts.rootTensor = 0;
    return launch([&] { return backend_->broadcast(list, opts); }, what);
  }

  void abort() override {
    if constexpr (HasAbort<Backend>::value) {
      try {
        backend_->abort();
      } catch (...) {
      }
    }
  }

  void storeSet(const std::string& key, const std::vector<uint8_t>& value) override {
    guard([&] { store_->set(key, value); }, "store set of '" + key + "'");
  }
  std::vector<uint8_t> storeGet(const std::string& key) override {
    std::vector<uint8_t> out;
    guard([&] { out = store_->get(key); }, "store read of '" + key + "'");
    return out;
  }
  int64_t storeAdd(const std::string& key, int64_t delta) override {
    int64_t out = 0;
    guard([&] { out = store_->add(key, delta); }, "store add to '" + key + "'");
    return out;
  }
  bool storeDelete(const std::string& key) override {
    bool out = false;
    guard([&] { out = store_->deleteKey(key); }, "store delete of '" + key + "'");
    return out;
  }

 private:
  void check(const torch::Tensor& t, const std::string& what) const {
    if (!t.defined() || !t.is_contiguous() || t.device() != device())
      throw std::logic_error(what + ": collectives take one contiguous tensor on " + device().str());
  }
  template <typename F>
  std::shared_ptr<PendingCollective> launch(F&& f, const std::string& what) {
    const std::string named = what + " (rank " + std::to_string(rank()) + " of " + std::to_string(worldSize()) + ", " + backend() + ")";
    try {
      return std::make_shared<C10dCollective>(f(), named, std::chrono::milliseconds(options_.timeoutMs), backend() == "nccl");
    } catch (const std::exception& e) {
      throw std::runtime_error(named + " failed: " + messageOf(e));
    }
  }
  template <typename F>
  void guard(F&& f, const std::string& what) {
    try {
      f();
    } catch (const std::exception& e) {
      throw std::runtime_error(what + " (rank " + std::to_string(rank()) + " of " + std::to_string(worldSize()) + ") failed: " + messageOf(e));
    }
  }

  c10::intrusive_ptr<c10d::Store> store_;
  c10::intrusive_ptr<Backend> backend_;
};

bool isLoopback(const std::string& addr) {
  return addr == "localhost" || addr == "::1" || addr.rfind("127.", 0) == 0;
}

}  // namespace

std::vector<std::string> ProcessGroup::availableBackends() {
  std::vector<std::string> out;
#ifdef ONESTAGE_WITH_GLOO
  out.emplace_back("gloo");
#endif
#ifdef ONESTAGE_WITH_NCCL
  out.emplace_back("nccl");
#endif
  return out;
}

torch::Device ProcessGroup::device() const {
  if (options_.backend == "nccl") return torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(options_.deviceIndex));
  return torch::Device(torch::kCPU);
}

std::shared_ptr<ProcessGroup> ProcessGroup::create(const ProcessGroupOptions& o) {
  if (o.worldSize < 1) throw RangeError("world size must be at least 1, received " + std::to_string(o.worldSize));
  if (o.rank < 0 || o.rank >= o.worldSize)
    throw RangeError("rank must be in [0, " + std::to_string(o.worldSize - 1) + "], received " + std::to_string(o.rank));
  if (o.masterPort < 1 || o.masterPort > 65535) throw RangeError("master port must be in [1, 65535], received " + std::to_string(o.masterPort));
  if (o.timeoutMs < 1) throw RangeError("timeout must be positive, received " + std::to_string(o.timeoutMs) + " ms");
  const auto available = availableBackends();
  if (std::find(available.begin(), available.end(), o.backend) == available.end()) {
    std::string list;
    for (const auto& b : available) list += (list.empty() ? "" : ", ") + b;
    throw RangeError("the '" + o.backend + "' backend is not in this build of onestage (available: " + (list.empty() ? "none" : list) +
                     (o.backend == "gloo" ? "; on Debian/Ubuntu install libgloo-dev and rebuild" : "") + ")");
  }
  const std::chrono::milliseconds timeout(o.timeoutMs);
  const std::string where = "rendezvous at " + o.masterAddr + ":" + std::to_string(o.masterPort) + " as rank " + std::to_string(o.rank) +
                            " of " + std::to_string(o.worldSize);
  try {
    c10d::TCPStoreOptions so;
    so.port = static_cast<std::uint16_t>(o.masterPort);
    so.isServer = o.rank == 0 && !o.agentStore;
    so.numWorkers = static_cast<std::size_t>(o.worldSize);
    so.waitWorkers = !o.agentStore;
    so.timeout = timeout;
    auto tcp = c10::make_intrusive<c10d::TCPStore>(o.masterAddr, so);
    c10::intrusive_ptr<c10d::Store> store = c10::make_intrusive<c10d::PrefixStore>("onestage", tcp);
    if (o.backend == "gloo") {
#ifdef ONESTAGE_WITH_GLOO
      auto opts = c10d::ProcessGroupGloo::Options::create(timeout);
      if (!o.interface.empty())
        opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(o.interface));
      else if (isLoopback(o.masterAddr))
        opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
      else
        opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
      auto pg = c10::make_intrusive<c10d::ProcessGroupGloo>(c10::make_intrusive<c10d::PrefixStore>("gloo", store),
                                                            static_cast<int>(o.rank), static_cast<int>(o.worldSize), opts);
      return std::make_shared<C10dProcessGroup<c10d::ProcessGroupGloo>>(o, store, pg);
#endif
    } else if (o.backend == "nccl") {
#ifdef ONESTAGE_WITH_NCCL
      auto opts = c10d::ProcessGroupNCCL::Options::create();
      opts->timeout = timeout;
      c10::intrusive_ptr<c10d::Store> ncclStore = c10::make_intrusive<c10d::PrefixStore>("nccl", store);
      auto pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(ncclStore, static_cast<int>(o.rank), static_cast<int>(o.worldSize), opts);
      return std::make_shared<C10dProcessGroup<c10d::ProcessGroupNCCL>>(o, store, pg);
#endif
    }
  } catch (const std::exception& e) {
    throw std::runtime_error(where + " failed: " + messageOf(e));
  }
  throw std::logic_error("unreachable backend " + o.backend);
}

torch::Tensor ProcessGroup::mean(const torch::Tensor& tensor, const std::string& what) {
  torch::NoGradGuard noGrad;
  auto buffer = tensor.detach().to(device(), tensor.scalar_type(), /*non_blocking=*/false, /*copy=*/true).contiguous();
  allreduceSum(buffer, what)->wait();
  return buffer.div_(static_cast<double>(worldSize())).to(tensor.device());
}

void ProcessGroup::broadcastInPlace(const std::vector<torch::Tensor>& tensors, int64_t root, const std::string& what) {
  torch::NoGradGuard noGrad;
  std::vector<torch::ScalarType> dtypes;
  for (const auto& t : tensors)
    if (std::find(dtypes.begin(), dtypes.end(), t.scalar_type()) == dtypes.end()) dtypes.push_back(t.scalar_type());
  for (const auto dtype : dtypes) {
    std::vector<torch::Tensor> group, flat;
    for (const auto& t : tensors)
      if (t.scalar_type() == dtype) {
        group.push_back(t);
        flat.push_back(t.detach().reshape({-1}).to(device()));
      }
    auto buffer = torch::cat(flat).contiguous();
    broadcast(buffer, root, what)->wait();
    int64_t offset = 0;
    for (auto& t : group) {
      t.detach().copy_(buffer.narrow(0, offset, t.numel()).view(t.sizes()));
      offset += t.numel();
    }
  }
}

std::vector<int64_t> ProcessGroup::allGather(const std::vector<int64_t>& values, const std::string& what) {
  torch::NoGradGuard noGrad;
  const auto n = static_cast<int64_t>(values.size());
  // every rank fills its own row of zeros; the sum over the ranks is every rank's row
  auto rows = torch::zeros({worldSize(), n}, torch::TensorOptions().dtype(torch::kInt64));
  if (n > 0) std::copy(values.begin(), values.end(), rows[rank()].data_ptr<int64_t>());
  auto buffer = rows.to(device());
  allreduceSum(buffer, what)->wait();
  const auto host = buffer.cpu().contiguous();
  return std::vector<int64_t>(host.data_ptr<int64_t>(), host.data_ptr<int64_t>() + host.numel());
}

void ProcessGroup::barrier(const std::string& what) {
  auto flag = torch::ones({1}, torch::TensorOptions().dtype(torch::kFloat32).device(device()));
  allreduceSum(flag, what)->wait();
}

}  // namespace onestage
