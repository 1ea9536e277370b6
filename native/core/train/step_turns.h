// Training steps in the order they were asked for, whichever threads carry them. A caller that knows
// the order (the JavaScript thread, which may ask for the next step before the last one has finished)
// takes a ticket; the step waits for its turn before it touches the model, and serves its ticket when
// it ends, normally or by an exception. Without tickets, two steps in flight would race for the
// model's mutex on two libuv threads, and the later one could win (other learning rate, other batch).
#pragma once
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <set>

namespace onestage {

class StepTurns {
 public:
  /// The next ticket (tickets are served in the order they are taken).
  uint64_t take() {
    const std::lock_guard<std::mutex> lock(mutex_);
    return next_++;
  }

  /// A ticket whose step will never run (its worker could not be queued): skipped when its turn comes.
  void abandon(uint64_t ticket) {
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      abandoned_.insert(ticket);
      skipAbandoned();
    }
    turn_.notify_all();
  }

  /// Waits for `ticket`'s turn on construction, serves it on destruction.
  class Turn {
   public:
    Turn(StepTurns& turns, uint64_t ticket) : turns_(turns), ticket_(ticket) {
      std::unique_lock<std::mutex> lock(turns_.mutex_);
      turns_.turn_.wait(lock, [this] { return turns_.served_ == ticket_; });
    }
    ~Turn() {
      {
        const std::lock_guard<std::mutex> lock(turns_.mutex_);
        turns_.served_ = ticket_ + 1;
        turns_.skipAbandoned();
      }
      turns_.turn_.notify_all();
    }
    Turn(const Turn&) = delete;
    Turn& operator=(const Turn&) = delete;

   private:
    StepTurns& turns_;
    uint64_t ticket_;
  };

 private:
  void skipAbandoned() {  // under mutex_
    while (abandoned_.erase(served_)) ++served_;
  }

  std::mutex mutex_;
  std::condition_variable turn_;
  uint64_t next_ = 0;    // the next ticket to hand out
  uint64_t served_ = 0;  // the ticket whose step may run now
  std::set<uint64_t> abandoned_;
};

}  // namespace onestage
