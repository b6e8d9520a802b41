// Lightweight threads (uthreads): cheap threads on Boost.Context, run by one
// scheduler per application core. A far-memory miss inside a uthread posts the
// read, parks the uthread and runs another; the scheduler wakes it when the
// page arrives, so a core keeps working while pages are in flight.
//
//   farmem::uthread::start(1);                       // one scheduler per app core
//   farmem::uthread::WaitGroup wg;
//   for (int i = 0; i < 64; ++i) {
//     wg.add(1);
//     farmem::uthread::spawn([&] { work(); wg.done(); }).detach();
//   }
//   wg.wait();
//   farmem::uthread::stop();
//
// Sync primitives also work from plain threads (they spin-yield there).
#pragma once
#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>

namespace farmem::uthread {

namespace detail {
struct Uthread;
struct Waiter;
class SpinLock {
 public:
  void lock() {
    while (f_.exchange(true, std::memory_order_acquire))
      while (f_.load(std::memory_order_relaxed)) __builtin_ia32_pause();
  }
  bool try_lock() { return !f_.load(std::memory_order_relaxed) && !f_.exchange(true, std::memory_order_acquire); }
  void unlock() { f_.store(false, std::memory_order_release); }

 private:
  std::atomic<bool> f_{false};
};
}  // namespace detail

// Starts `schedulers` scheduler threads (0 = one per CPU except the evictor's),
// pinned to CPUs 0.. in order. Also starts the far-memory runtime if needed.
void start(unsigned schedulers = 0);
// Waits for every uthread to finish, then stops the schedulers.
void stop();
bool running();
unsigned scheduler_count();

class Handle {
 public:
  Handle() = default;
  explicit Handle(detail::Uthread* u) : u_(u) {}
  Handle(Handle&& o) noexcept : u_(o.u_) { o.u_ = nullptr; }
  Handle& operator=(Handle&& o) noexcept;
  ~Handle();  // detaches if not joined
  void join();
  void detach();
  bool joinable() const { return u_ != nullptr; }

 private:
  detail::Uthread* u_ = nullptr;
};

// Runs fn in a new uthread (on the caller's scheduler when called from a
// uthread, else round robin).
Handle spawn(std::function<void()> fn);
void yield();  // from a plain thread: std::this_thread::yield()
// Waits until fd is ready for `events` (POLLIN, POLLOUT); returns the events
// that are ready (POLLERR/POLLHUP included). In a uthread it parks, and the
// scheduler runs others and watches fd with its epoll instance; from a plain
// thread it is poll(2). Use with non-blocking descriptors: read until EAGAIN,
// then wait_fd.
short wait_fd(int fd, short events);
void sleep_for(std::chrono::nanoseconds d);
bool in_uthread();

class Mutex {
 public:
  void lock();
  bool try_lock();
  void unlock();

 private:
  friend class CondVar;
  std::atomic<bool> locked_{false};
  detail::SpinLock wl_;
  std::deque<detail::Waiter*> waiters_;
};

class CondVar {
 public:
  void wait(Mutex& m);  // m locked on entry and on return
  template <class Pred>
  void wait(Mutex& m, Pred p) {
    while (!p()) wait(m);
  }
  void notify_one();
  void notify_all();

 private:
  detail::SpinLock wl_;
  std::deque<detail::Waiter*> waiters_;
};

class WaitGroup {
 public:
  void add(std::int64_t n);
  void done() { add(-1); }
  void wait();

 private:
  detail::SpinLock wl_;
  std::int64_t count_ = 0;
  std::deque<detail::Waiter*> waiters_;
};

}  // namespace farmem::uthread
