// A thread of its own for a CUDA model's work: jobs run there one at a time, in order, and their
// result (or exception) is handed back to the caller, who waits. cuDNN keeps its handles and its
// benchmark results per thread: work handed to whichever libuv thread is free would create handles
// and benchmark the convolutions anew on each thread it lands on (with a pool of 16 threads, detect
// 3× slower and early training steps seconds long), and a CUDA graph capture on a thread that has not
// run the step would have to benchmark inside the capture, which fails.
#pragma once
#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <mutex>
#include <thread>

namespace onestage {

class DeviceThread {
 public:
  DeviceThread() : thread_([this] { serve(); }) {}
  ~DeviceThread() {
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
    thread_.join();
  }
  DeviceThread(const DeviceThread&) = delete;
  DeviceThread& operator=(const DeviceThread&) = delete;

  /// Runs `job` on the thread and returns its result (or rethrows its exception). Never call it from a
  /// job (the thread would wait for itself).
  template <class F>
  auto run(F job) -> decltype(job()) {
    std::packaged_task<decltype(job())()> task(std::move(job));
    auto result = task.get_future();
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      jobs_.emplace_back([&task] { task(); });
    }
    wake_.notify_all();
    return result.get();
  }

 private:
  void serve() {
    for (;;) {
      std::function<void()> job;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [this] { return stopping_ || !jobs_.empty(); });
        if (jobs_.empty()) return;
        job = std::move(jobs_.front());
        jobs_.pop_front();
      }
      job();
    }
  }

  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::function<void()>> jobs_;
  bool stopping_ = false;
  std::thread thread_;  // last: starts once the members it uses exist
};

}  // namespace onestage
