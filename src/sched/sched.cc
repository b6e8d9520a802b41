// Uthread schedulers: one pinned kernel thread per application core, each with
// a run queue, a timer heap, and the core's queue pair to poll. Switches go
// uthread -> scheduler -> uthread on Boost.Context fcontext. A switch is a
// scheduling point for far memory: the core acknowledges shootdowns there, and
// a uthread that leaves the CPU inside a scope turns its hazards into pins.
// Idle schedulers steal runnable uthreads that are not inside a scope.
#include "sched/sched.hpp"

#include <pthread.h>
#include <sched.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <algorithm>
#include <deque>
#include <memory>
#include <mutex>
#include <queue>
#include <thread>
#include <vector>

#include "farmem/far.hpp"
#include "mem/page_state.hpp"
#include "transport/queue_pair.hpp"
#include "runtime/fatal.hpp"
#include "runtime/os.hpp"
#include "runtime/runtime.hpp"

#if defined(__SANITIZE_THREAD__)
extern "C" {
void* __tsan_get_current_fiber();
void* __tsan_create_fiber(unsigned flags);
void __tsan_destroy_fiber(void* fiber);
void __tsan_switch_to_fiber(void* fiber, unsigned flags);
}
#endif
#if defined(__SANITIZE_ADDRESS__)
extern "C" {
void __sanitizer_start_switch_fiber(void** fake_stack_save, const void* bottom, std::size_t size);
void __sanitizer_finish_switch_fiber(void* fake_stack_save, const void** bottom_old, std::size_t* size_old);
}
#endif

namespace farmem::uthread::detail {

namespace ctx = boost::context::detail;
using farmem::detail::Core;

namespace {

constexpr std::size_t kStackSize = 64 * 1024;
constexpr std::size_t kGuard = 4096;
constexpr unsigned kMaxSchedulers = 60;

using farmem::detail::now_ns;

Stack new_stack() {
  void* p = mmap(nullptr, kStackSize + kGuard, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
  if (p == MAP_FAILED) farmem::detail::fatal("cannot map a uthread stack: out of memory");
  mprotect(p, kGuard, PROT_NONE);  // overflow faults instead of corrupting a neighbour
  return {static_cast<char*>(p), kStackSize + kGuard};
}

}  // namespace

class Scheduler {
 public:
  unsigned id = 0;
  std::thread thread;
  ctx::fcontext_t sched_ctx = nullptr;
  Uthread* running = nullptr;
  Core* core = nullptr;
  std::atomic<bool> started{false};

  SpinLock qlock;                 // run queue: pushed by anyone, popped/stolen under the lock
  std::deque<Uthread*> runq;
  std::atomic<std::size_t> nq{0};  // runq.size(), readable without the lock
  // 0 running; 1 asleep on wake_word (futex); 2 asleep in epoll_wait (uthreads
  // wait on descriptors): a waker also writes the eventfd.
  alignas(64) std::atomic<std::uint32_t> sleeping{0};
  std::atomic<std::uint32_t> wake_word{0};
  int epfd = -1, evfd = -1;       // descriptors uthreads wait on (wait_fd), and the wake-up eventfd

  // Owned by the scheduler thread.
  std::priority_queue<std::pair<std::uint64_t, Uthread*>, std::vector<std::pair<std::uint64_t, Uthread*>>,
                      std::greater<>> timers;
  std::uint64_t io_waiting = 0;
  std::uint64_t fd_waiting = 0;   // uthreads parked in wait_fd
  unsigned runs_since_epoll = 0;  // bounds how long a ready descriptor waits to be noticed
  std::uint64_t unsubmitted = 0;  // reads posted by uthreads, doorbell not rung yet
  unsigned runs_since_post = 0;    // bounds how long a posted read waits for its doorbell
  std::vector<Stack> stacks;      // stack pool
  void* tsan_fiber = nullptr;

  // From the scheduler's own thread: nobody to wake.
  void push_local(Uthread* u) {
    qlock.lock();
    runq.push_back(u);
    nq.store(runq.size(), std::memory_order_relaxed);
    qlock.unlock();
  }
  // From anywhere: also wakes the scheduler if it sleeps.
  void push(Uthread* u) {
    push_local(u);
    std::atomic_thread_fence(std::memory_order_seq_cst);  // pairs with the sleeper's check
    if (std::uint32_t how = sleeping.load(std::memory_order_seq_cst)) {
      wake_word.fetch_add(1, std::memory_order_seq_cst);
      if (how == 2) {
        std::uint64_t one = 1;
        if (write(evfd, &one, sizeof one) < 0) {
        }
      } else {
        farmem::detail::futex_wake(&wake_word);
      }
    }
  }
  void watch_fd(Uthread* u);
  void poll_fds(long timeout_ns);
  Uthread* pop() {
    if (nq.load(std::memory_order_relaxed) == 0) return nullptr;  // peek; the lock decides
    qlock.lock();
    Uthread* u = nullptr;
    if (!runq.empty()) {
      u = runq.front();
      runq.pop_front();
      nq.store(runq.size(), std::memory_order_relaxed);
    }
    qlock.unlock();
    return u;
  }
  void loop();
  bool steal();
  void run(Uthread* u);
  void switch_in(Uthread* u);
  void switch_out(Uthread* u);
  void finish(Uthread* u);
  Stack get_stack() {
    if (stacks.empty()) return new_stack();
    Stack s = stacks.back();
    stacks.pop_back();
    return s;
  }
};

namespace {
std::mutex g_mu;
std::vector<std::unique_ptr<Scheduler>> g_scheds;
std::atomic<unsigned> g_nscheds{0};
std::atomic<bool> g_stop{false};
std::atomic<std::uint64_t> g_live{0};  // uthreads not yet finished
std::atomic<unsigned> g_rr{0};
// initial-exec: read with one %fs-relative load (no __tls_get_addr on every switch).
__attribute__((tls_model("initial-exec"))) thread_local Scheduler* tls_sched = nullptr;

void unref(Uthread* u) {
  if (u->refs.fetch_sub(1, std::memory_order_acq_rel) == 1) delete u;
}

// Entry of every uthread: run fn, then switch away for good.
void entry(ctx::transfer_t t) {
  Uthread* u = static_cast<Uthread*>(t.data);
  u->home->sched_ctx = t.fctx;
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_finish_switch_fiber(nullptr, nullptr, nullptr);
#endif
  try {
    u->fn();
  } catch (...) {
    farmem::detail::fatal("a uthread ended with an uncaught exception");
  }
  u->fn = nullptr;
  u->after = After::Exit;
  Scheduler* s = u->home;
#if defined(__SANITIZE_THREAD__)
  __tsan_switch_to_fiber(s->tsan_fiber, 0);
#endif
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_start_switch_fiber(nullptr, nullptr, 0);
#endif
  ctx::jump_fcontext(s->sched_ctx, nullptr);
  __builtin_unreachable();
}

// From a uthread to its scheduler; returns when the uthread runs again.
void to_scheduler(Uthread* u) {
  Scheduler* s = u->home;
#if defined(__SANITIZE_THREAD__)
  __tsan_switch_to_fiber(s->tsan_fiber, 0);
#endif
#if defined(__SANITIZE_ADDRESS__)
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, nullptr, 0);
#endif
  ctx::transfer_t t = ctx::jump_fcontext(s->sched_ctx, nullptr);
  // Resumed, possibly by another scheduler (stolen): remember who.
  u->home->sched_ctx = t.fctx;
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
}
}  // namespace

// Far-memory state of the core follows the uthread on and off the CPU.
void Scheduler::switch_in(Uthread* u) {
  Core& c = *core;
  c.depth = u->depth;
  c.npins = u->npins;
  c.pins = u->pins;
  ++c.scope_serial;  // cached translations must be re-published as this uthread's hazards
  farmem::detail::ack_point(c);
  if (c.depth > 0) c.ack.store(c.seen_gen, std::memory_order_seq_cst);
}

void Scheduler::switch_out(Uthread* u) {
  Core& c = *core;
  if (c.depth > 0) {
    // Leaving the CPU inside a scope: the core's hazard list is about to be
    // reused, so pin this uthread's pages until its scope ends.
    farmem::detail::Runtime& rt = farmem::detail::current();
    std::uint32_t n = c.nhazards.load(std::memory_order_relaxed);
    if (n) {
      if (c.pins == nullptr) c.pins = new std::vector<std::uint64_t>();
      auto* v = static_cast<std::vector<std::uint64_t>*>(c.pins);
      for (std::uint32_t k = 0; k < n; ++k) {
        std::uint64_t vpn = c.hazards[k].load(std::memory_order_relaxed);
        rt.pt[vpn].fetch_add(farmem::mem::ps::kPinOne, std::memory_order_acq_rel);
        v->push_back(vpn);
      }
      c.npins += n;
    }
  }
  c.nhazards.store(0, std::memory_order_release);
  u->depth = c.depth;
  u->npins = c.npins;
  u->pins = c.pins;
  c.depth = 0;
  c.npins = 0;
  c.pins = nullptr;
  c.ack.store(c.seen_gen | farmem::detail::kOffline, std::memory_order_release);
}

void Scheduler::run(Uthread* u) {
  u->home = this;
  running = u;
  switch_in(u);
#if defined(__SANITIZE_THREAD__)
  __tsan_switch_to_fiber(u->tsan_fiber, 0);
#endif
#if defined(__SANITIZE_ADDRESS__)
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, u->stack.base + kGuard, kStackSize);
#endif
  ctx::transfer_t t = ctx::jump_fcontext(u->ctx, u);
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
  u->ctx = t.fctx;
  running = nullptr;
  switch_out(u);
  switch (u->after) {
    case After::Yield:
      push_local(u);
      break;
    case After::Park:
      u->unlock_after->unlock();
      break;
    case After::Io:
      ++io_waiting;
      ++unsubmitted;
      break;
    case After::Sleep:
      timers.emplace(u->wake_at_ns, u);
      break;
    case After::Fd:
      watch_fd(u);
      break;
    case After::Exit:
      finish(u);
      break;
  }
}

// A uthread waits for a descriptor: arm it (one shot) in this scheduler's
// epoll set. A descriptor epoll cannot watch (a regular file) is ready now.
void Scheduler::watch_fd(Uthread* u) {
  epoll_event ev{};
  ev.events = u->wait_events | EPOLLONESHOT;
  ev.data.ptr = u;
  int r = epoll_ctl(epfd, EPOLL_CTL_MOD, u->wait_fd, &ev);  // armed here before: re-arm
  if (r != 0 && errno == ENOENT) r = epoll_ctl(epfd, EPOLL_CTL_ADD, u->wait_fd, &ev);
  if (r != 0) {
    u->wait_events = errno == EPERM ? u->wait_events : POLLNVAL;
    push_local(u);
    return;
  }
  ++fd_waiting;
}

// Requeues the uthreads whose descriptors are ready (waits up to timeout_ns).
void Scheduler::poll_fds(long timeout_ns) {
  epoll_event evs[64];
  timespec ts{timeout_ns / 1000000000L, timeout_ns % 1000000000L};
  int n = timeout_ns > 0 ? epoll_pwait2(epfd, evs, 64, &ts, nullptr) : epoll_wait(epfd, evs, 64, 0);
  for (int i = 0; i < n; ++i) {
    auto* u = static_cast<Uthread*>(evs[i].data.ptr);
    if (u == nullptr) {  // the wake-up eventfd
      std::uint64_t v;
      if (read(evfd, &v, sizeof v) < 0) {
      }
      continue;
    }
    u->wait_events = evs[i].events;
    --fd_waiting;
    push_local(u);
  }
  runs_since_epoll = 0;
}

void Scheduler::finish(Uthread* u) {
  stacks.push_back(u->stack);
  u->stack = {};
#if defined(__SANITIZE_THREAD__)
  __tsan_destroy_fiber(u->tsan_fiber);
#endif
  u->jl.lock();
  u->done.store(true, std::memory_order_release);
  Waiter* j = u->joiner;
  u->jl.unlock();
  if (j) wake(j);
  g_live.fetch_sub(1, std::memory_order_acq_rel);
  unref(u);
}

bool Scheduler::steal() {
  unsigned n = g_nscheds.load(std::memory_order_acquire);
  for (unsigned k = 1; k < n; ++k) {
    Scheduler* v = g_scheds[(id + k) % n].get();
    if (v->nq.load(std::memory_order_relaxed) < 2 || !v->qlock.try_lock()) continue;
    std::vector<Uthread*> got;
    std::size_t want = v->runq.size() / 2;
    for (auto it = v->runq.end(); it != v->runq.begin() && got.size() < want;) {
      --it;
      if ((*it)->depth == 0) {  // a uthread inside a scope stays on its core
        got.push_back(*it);
        it = v->runq.erase(it);
      }
    }
    v->nq.store(v->runq.size(), std::memory_order_relaxed);
    v->qlock.unlock();
    if (got.empty()) continue;
    qlock.lock();
    for (Uthread* u : got) runq.push_back(u);
    nq.store(runq.size(), std::memory_order_relaxed);
    qlock.unlock();
    return true;
  }
  return false;
}

void Scheduler::loop() {
  long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(static_cast<int>(id % static_cast<unsigned>(ncpu)), &set);
  pthread_setaffinity_np(pthread_self(), sizeof set, &set);
  tls_sched = this;
  core = &farmem::detail::this_core();
#if defined(__SANITIZE_THREAD__)
  tsan_fiber = __tsan_get_current_fiber();
#endif
  auto* qp = static_cast<farmem::net::QueuePair*>(core->qp);
  farmem::net::Completion done[32];
  epfd = epoll_create1(EPOLL_CLOEXEC);
  evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (epfd < 0 || evfd < 0) farmem::detail::fatal("uthread scheduler: cannot create its epoll set (%s)", std::strerror(errno));
  {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.ptr = nullptr;
    epoll_ctl(epfd, EPOLL_CTL_ADD, evfd, &ev);
  }
  started.store(true, std::memory_order_release);
  unsigned idle = 0;
  for (;;) {
    // One doorbell for every read posted since the last one: when the run queue
    // has drained (all runnable uthreads had their turn) or the batch is large.
    if (unsubmitted && (unsubmitted >= 32 || runs_since_post >= 16 ||
                        nq.load(std::memory_order_relaxed) == 0)) {
      qp->submit();
      unsubmitted = 0;
      runs_since_post = 0;
    }
    if (io_waiting) {
      std::size_t n = qp->poll(done, 32);
      for (std::size_t i = 0; i < n; ++i) {
        push_local(reinterpret_cast<Uthread*>(done[i].cookie));
      }
      io_waiting -= n;
    }
    if (fd_waiting && (nq.load(std::memory_order_relaxed) == 0 || ++runs_since_epoll >= 16)) poll_fds(0);
    if (!timers.empty()) {
      std::uint64_t now = now_ns();
      while (!timers.empty() && timers.top().first <= now) {
        push_local(timers.top().second);
        timers.pop();
      }
    }
    if (Uthread* u = pop()) {
      idle = 0;
      run(u);
      if (unsubmitted) ++runs_since_post;
      continue;
    }
    farmem::detail::ack_point(*core);
    if (steal()) continue;
    if (g_stop.load(std::memory_order_acquire) && g_live.load(std::memory_order_acquire) == 0) break;
    if (io_waiting) {  // all runnable work is waiting for pages
      qp->wait(200);
      continue;
    }
    if (++idle < 4000) {
      farmem::detail::cpu_relax();
      continue;
    }
    // Nothing to do: sleep until pushed, the next timer, or 1 ms (to steal);
    // in epoll_wait when uthreads wait on descriptors, so those wake us too.
    std::uint32_t w = wake_word.load();
    sleeping.store(fd_waiting ? 2 : 1, std::memory_order_seq_cst);
    if (nq.load(std::memory_order_seq_cst) == 0) {
      long ns = 1000000;
      if (!timers.empty()) ns = std::max<long>(1000, std::min<long>(ns, static_cast<long>(timers.top().first - now_ns())));
      if (fd_waiting) poll_fds(ns);
      else farmem::detail::futex_wait(&wake_word, w, ns);
    }
    sleeping.store(0, std::memory_order_relaxed);
    idle = 0;
  }
  close(epfd);
  close(evfd);
}

Uthread* current() {
  Scheduler* s = tls_sched;
  return s ? s->running : nullptr;
}

void park(SpinLock& l) {
  Uthread* u = current();
  u->after = After::Park;
  u->unlock_after = &l;
  to_scheduler(u);
}

void park_io() {
  Uthread* u = current();
  u->after = After::Io;
  to_scheduler(u);
}

void wake(Waiter* w) {
  if (Uthread* u = w->u) {
    w->woken.store(1, std::memory_order_release);
    u->home->push(u);  // w lives on u's stack: not touched after this
  } else {
    // The waiter may return (and w vanish) as soon as it sees 1: a wake on a
    // dead futex word is harmless.
    w->woken.store(1, std::memory_order_release);
    farmem::detail::futex_wake(&w->woken);
  }
}

void wait_plain(Waiter& w) {
  for (unsigned i = 0; i < 2000; ++i) {
    if (w.woken.load(std::memory_order_acquire)) return;
    farmem::detail::cpu_relax();
  }
  while (!w.woken.load(std::memory_order_acquire))
    farmem::detail::futex_wait(&w.woken, 0);
}

}  // namespace farmem::uthread::detail

namespace farmem::uthread {

using namespace detail;

void start(unsigned n) {
  std::lock_guard<std::mutex> g(g_mu);
  if (g_nscheds.load() != 0) throw farmem::Error("farmem::uthread::start called twice");
  farmem::detail::runtime();  // far memory first: schedulers register as cores
  long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
  if (n == 0) n = ncpu > 1 ? static_cast<unsigned>(ncpu - 1) : 1;
  if (n > kMaxSchedulers)
    throw farmem::Error("uthread::start(" + std::to_string(n) + "): at most " +
                        std::to_string(kMaxSchedulers) + " schedulers");
  g_stop.store(false);
  for (unsigned i = 0; i < n; ++i) {
    auto s = std::make_unique<Scheduler>();
    s->id = i;
    g_scheds.push_back(std::move(s));
  }
  g_nscheds.store(n, std::memory_order_release);
  for (auto& s : g_scheds) {
    Scheduler* p = s.get();
    p->thread = std::thread([p] { p->loop(); });
    pthread_setname_np(p->thread.native_handle(), "farmem-sched");
  }
  for (auto& s : g_scheds)
    while (!s->started.load(std::memory_order_acquire)) std::this_thread::yield();
}

void stop() {
  std::lock_guard<std::mutex> g(g_mu);
  if (g_nscheds.load() == 0) return;
  g_stop.store(true, std::memory_order_release);
  for (auto& s : g_scheds) {
    s->wake_word.fetch_add(1);
    farmem::detail::futex_wake(&s->wake_word);
  }
  for (auto& s : g_scheds) s->thread.join();
  for (auto& s : g_scheds)
    for (Stack& st : s->stacks) munmap(st.base, st.size);
  g_nscheds.store(0);
  g_scheds.clear();
}

bool running() { return g_nscheds.load(std::memory_order_acquire) != 0; }
unsigned scheduler_count() { return g_nscheds.load(std::memory_order_acquire); }
bool in_uthread() { return current() != nullptr; }

Handle spawn(std::function<void()> fn) {
  unsigned n = g_nscheds.load(std::memory_order_acquire);
  if (n == 0) throw farmem::Error("farmem::uthread::spawn before farmem::uthread::start()");
  Scheduler* s = tls_sched ? tls_sched : g_scheds[g_rr.fetch_add(1, std::memory_order_relaxed) % n].get();
  auto* u = new Uthread();
  u->fn = std::move(fn);
  u->home = s;
  // Stacks come from the target scheduler's pool only on its own thread; others map one.
  u->stack = tls_sched == s ? s->get_stack() : new_stack();
  u->ctx = ctx::make_fcontext(u->stack.base + u->stack.size, kStackSize, entry);
#if defined(__SANITIZE_THREAD__)
  u->tsan_fiber = __tsan_create_fiber(0);
#endif
  g_live.fetch_add(1, std::memory_order_acq_rel);
  s->push(u);
  return Handle(u);
}

void yield() {
  Uthread* u = current();
  if (u == nullptr) {
    std::this_thread::yield();
    return;
  }
  u->after = After::Yield;
  to_scheduler(u);
}

short wait_fd(int fd, short events) {
  Uthread* u = current();
  if (u == nullptr) {
    pollfd p{fd, events, 0};
    while (poll(&p, 1, -1) < 0 && errno == EINTR) {
    }
    return p.revents;
  }
  u->wait_fd = fd;
  u->wait_events = static_cast<std::uint16_t>(events);  // POLLIN/POLLOUT are EPOLLIN/EPOLLOUT
  u->after = After::Fd;
  to_scheduler(u);
  return static_cast<short>(u->wait_events);
}

void sleep_for(std::chrono::nanoseconds d) {
  Uthread* u = current();
  if (u == nullptr) {
    std::this_thread::sleep_for(d);
    return;
  }
  u->wake_at_ns = now_ns() + static_cast<std::uint64_t>(std::max<std::int64_t>(0, d.count()));
  u->after = After::Sleep;
  to_scheduler(u);
}

Handle& Handle::operator=(Handle&& o) noexcept {
  if (this != &o) {
    detach();
    u_ = o.u_;
    o.u_ = nullptr;
  }
  return *this;
}

Handle::~Handle() { detach(); }

void Handle::detach() {
  if (u_) unref(u_);
  u_ = nullptr;
}

void Handle::join() {
  if (!u_) return;
  Waiter w;
  w.u = current();
  u_->jl.lock();
  if (u_->done.load(std::memory_order_acquire)) {
    u_->jl.unlock();
  } else {
    u_->joiner = &w;
    if (w.u) park(u_->jl);
    else {
      u_->jl.unlock();
      wait_plain(w);
    }
  }
  unref(u_);
  u_ = nullptr;
}

}  // namespace farmem::uthread
