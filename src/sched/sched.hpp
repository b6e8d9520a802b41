// Internal scheduler interface: what the fault path and the sync primitives use.
#pragma once
#include <boost/context/detail/fcontext.hpp>

#include <atomic>
#include <cstdint>
#include <functional>

#include "farmem/uthread.hpp"

namespace farmem::detail {
struct Core;
}

namespace farmem::uthread::detail {

class Scheduler;

struct Stack {
  char* base = nullptr;  // lowest address (guard page)
  std::size_t size = 0;  // including the guard page
};

enum class After : std::uint8_t { Yield, Park, Io, Sleep, Fd, Exit };

struct Uthread {
  boost::context::detail::fcontext_t ctx = nullptr;
  Stack stack;
  std::function<void()> fn;
  Scheduler* home = nullptr;
  After after = After::Yield;
  SpinLock* unlock_after = nullptr;      // released once we are off the CPU (park)
  std::uint64_t wake_at_ns = 0;
  int wait_fd = -1;                      // After::Fd: the descriptor and events it waits for
  std::uint32_t wait_events = 0;
  // Far-memory scope state, swapped in and out with the uthread.
  std::uint32_t depth = 0, npins = 0;
  void* pins = nullptr;
  // Completion and join.
  std::atomic<bool> done{false};
  SpinLock jl;
  Waiter* joiner = nullptr;
  std::atomic<int> refs{2};              // the handle and the running uthread
  void* tsan_fiber = nullptr;
};

// A uthread or a plain thread waiting on a sync primitive.
struct Waiter {
  Uthread* u = nullptr;
  std::atomic<std::uint32_t> woken{0};  // a futex word for plain threads
};

Uthread* current();
// Parks the running uthread; `l` (held by the caller) is released once it is off
// the CPU, so a waker that takes `l` can never wake it too early.
void park(SpinLock& l);
void wake(Waiter* w);
// Plain-thread side of a wait: spin, then yield, until woken.
void wait_plain(Waiter& w);

// Fault path hooks: park until a read posted with cookie current() completes.
void park_io();

}  // namespace farmem::uthread::detail
