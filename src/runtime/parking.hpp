// The park handshake fork() uses to bring a runtime thread (the evictor, the
// region's fault handler) to rest: the forking thread asks, the worker parks at
// its next safe point, the forking thread releases it after fork(). Waiting is
// bounded: a worker that cannot reach a safe point (it needs an acknowledgement
// from a thread stuck in a scope) ends the program with one line, never a hang.
#pragma once
#include <atomic>
#include <cstdint>

#include "runtime/fatal.hpp"
#include "runtime/os.hpp"

namespace farmem::detail {

class Parking {
 public:
  static constexpr std::uint64_t kLimitNs = 20ull * 1000 * 1000 * 1000;

  // Worker side: whether a park was asked for (cheap; check it at safe points).
  bool asked() const { return req_.load(std::memory_order_acquire) != 0; }
  // Worker side: parks until released. Call when asked() and at rest.
  void park() {
    parked_.store(1, std::memory_order_release);
    futex_wake(&parked_);
    while (req_.load(std::memory_order_acquire)) futex_wait(&req_, 1);
    parked_.store(0, std::memory_order_release);
  }

  // Forking side: asks and waits until the worker parked. nudge() wakes a
  // sleeping worker; while_waiting() lets the caller acknowledge shootdowns
  // itself (it may be inside a scope the worker's batch waits for).
  template <class Nudge, class WhileWaiting>
  void ask(const char* who, const char* likely_cause, Nudge nudge, WhileWaiting while_waiting) {
    req_.store(1, std::memory_order_seq_cst);
    const std::uint64_t t0 = now_ns();
    for (;;) {
      nudge();
      if (parked_.load(std::memory_order_acquire)) return;
      while_waiting();
      futex_wait(&parked_, 0, 1000000);
      if (now_ns() - t0 > kLimitNs)
        fatal("fork() waited %llu s for the %s to come to rest: %s",
              static_cast<unsigned long long>(kLimitNs / 1000000000ull), who, likely_cause);
    }
  }
  void release() {
    req_.store(0, std::memory_order_seq_cst);
    futex_wake(&req_);
  }
  // In a forked child the worker thread does not exist.
  void forget() {
    req_.store(0);
    parked_.store(0);
  }

 private:
  std::atomic<std::uint32_t> req_{0}, parked_{0};
};

}  // namespace farmem::detail
