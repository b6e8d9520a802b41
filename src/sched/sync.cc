// Uthread-aware mutex, condition variable and wait group. A uthread that must
// wait parks (its scheduler runs others); a plain thread spin-yields. Wake-ups
// cannot be lost: a waiter is queued under the primitive's spinlock, and a
// parking uthread releases that spinlock only once it is off the CPU.
#include "farmem/runtime.hpp"
#include "sched/sched.hpp"

namespace farmem::uthread {

using detail::Waiter;

namespace {
// Queue the caller on `q` (under `l`, held on entry) and wait; `l` is released.
void wait_on(detail::SpinLock& l, std::deque<Waiter*>& q) {
  Waiter w;
  w.u = detail::current();
  q.push_back(&w);
  if (w.u) {
    detail::park(l);
  } else {
    l.unlock();
    detail::wait_plain(w);
  }
}
}  // namespace

bool Mutex::try_lock() {
  bool expect = false;
  return locked_.compare_exchange_strong(expect, true, std::memory_order_acquire);
}

void Mutex::lock() {
  if (try_lock()) return;
  wl_.lock();
  if (try_lock()) {
    wl_.unlock();
    return;
  }
  // unlock() hands the mutex over to the first waiter: when we wake, we own it.
  wait_on(wl_, waiters_);
}

void Mutex::unlock() {
  wl_.lock();
  if (!waiters_.empty()) {
    Waiter* w = waiters_.front();
    waiters_.pop_front();
    wl_.unlock();
    detail::wake(w);  // locked_ stays true: ownership passes to w
    return;
  }
  locked_.store(false, std::memory_order_release);
  wl_.unlock();
}

void CondVar::wait(Mutex& m) {
  wl_.lock();
  Waiter w;
  w.u = detail::current();
  waiters_.push_back(&w);
  m.unlock();  // after we are queued: a notify between here and park finds us
  if (w.u) {
    detail::park(wl_);
  } else {
    wl_.unlock();
    detail::wait_plain(w);
  }
  m.lock();
}

void CondVar::notify_one() {
  wl_.lock();
  Waiter* w = nullptr;
  if (!waiters_.empty()) {
    w = waiters_.front();
    waiters_.pop_front();
  }
  wl_.unlock();
  if (w) detail::wake(w);
}

void CondVar::notify_all() {
  wl_.lock();
  std::deque<Waiter*> all;
  all.swap(waiters_);
  wl_.unlock();
  for (Waiter* w : all) detail::wake(w);
}

void WaitGroup::add(std::int64_t n) {
  wl_.lock();
  count_ += n;
  if (count_ < 0) {
    wl_.unlock();
    throw farmem::Error("WaitGroup counter went negative: more done() than add()");
  }
  std::deque<Waiter*> all;
  if (count_ == 0) all.swap(waiters_);
  wl_.unlock();
  for (Waiter* w : all) detail::wake(w);
}

void WaitGroup::wait() {
  wl_.lock();
  if (count_ == 0) {
    wl_.unlock();
    return;
  }
  wait_on(wl_, waiters_);
}

}  // namespace farmem::uthread
