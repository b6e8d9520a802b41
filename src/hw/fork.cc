// The region's side of fork(): the handler parks, and a child serves its
// faults locally from the shm server's copy-on-write snapshot.
#include "hw/region.hpp"

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "mem/page_state.hpp"
#include "transport/queue_pair.hpp"
#include "runtime/fatal.hpp"
#include "runtime/runtime.hpp"

namespace farmem::hw {

using mem::Kind;
namespace ps = mem::ps;

void Region::fork_prepare() {
  if (handler_ != nullptr)  // SIGBUS mode has no handler thread
    parking_.ask(
        "transparent-fault handler", "a fault it serves does not complete; is the memory server answering?",
        [&] {
          std::uint64_t one = 1;
          if (write(wake_fd_, &one, sizeof one) < 0) {
          }
        },
        [] {});
  watch_mu_.lock();
  mu_.lock();
  pages_.lock();
}

void Region::fork_parent() {
  pages_.unlock();
  mu_.unlock();
  watch_mu_.unlock();
  parking_.release();
}

void Region::fork_child() {
  pages_.unlock();
  mu_.unlock();
  watch_mu_.unlock();
  // The inherited descriptors belong to the parent (its userfaultfd acts on the
  // parent's memory): close them and serve this process's copy of the region.
  close(uffd_.fd);
  close(wake_fd_);
  in_thread_ = false;  // the child's faults go to its own handler thread
  wake_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  parking_.forget();
  handler_ = nullptr;  // the parent's handler thread does not exist here
  // Only watched chunks can hold far or untracked-missing pages; unwatched
  // ones are plain memory here as in the parent. A process that never watched
  // a chunk (a shell that forks and execs) needs no userfaultfd at all.
  std::vector<std::pair<std::uint64_t, std::uint64_t>> runs;  // (first chunk, chunks)
  for (std::uint64_t c = 0; c < nchunks_; ++c)
    if (!lazy_ || watched_[c].load(std::memory_order_relaxed)) {
      if (!runs.empty() && runs.back().first + runs.back().second == c) ++runs.back().second;
      else runs.emplace_back(c, 1);
    }
  if (runs.empty()) {
    uffd_.fd = -1;
    return;
  }
  try {
    uffd_ = open_uffd(false, uffd_.user_mode_only);  // the parent's privileges
    for (auto [c, n] : runs) register_range(uffd_.fd, base_ + c * kChunkPages * 4096, n * kChunkPages * 4096);
  } catch (const Error& e) {
    detail::fatal("forked child: %s", e.what());
  }
  child_qp_ = rt_.transport->create_qp();
  child_handler_up_.store(0);
  child_serving_done_.store(0);
  start_handler(&Region::child_loop);
  serve_until_child_handler_up();
}

// A new thread's start-up reads memory the program allocated (glibc's locale
// data, for one), which may be far in the region; the handler thread would then
// wait for itself. So the forking thread serves faults until the handler is in
// its loop, and the handler waits until it stopped: the child's queue pair and
// staging page are never used by both.
void Region::serve_until_child_handler_up() {
  while (!child_handler_up_.load(std::memory_order_acquire)) {
    pollfd p{uffd_.fd, POLLIN, 0};
    if (poll(&p, 1, 1) > 0) serve_child_faults(1);
  }
  child_serving_done_.store(1, std::memory_order_release);
  detail::futex_wake(&child_serving_done_);
}

// Reads up to `max` fault messages and serves them.
void Region::serve_child_faults(std::size_t max) {
  uffd_msg msgs[64];
  const ssize_t got = read(uffd_.fd, msgs, std::min<std::size_t>(max, 64) * sizeof(uffd_msg));
  for (ssize_t i = 0; i < got / static_cast<ssize_t>(sizeof(uffd_msg)); ++i)
    if (msgs[i].event == UFFD_EVENT_PAGEFAULT) resolve_in_child(msgs[i].arg.pagefault.address & ~std::uint64_t{4095});
}

// In a forked child: a page that was far at fork time comes from the memory
// server's snapshot and stays local; a never-touched page is zero.
void Region::resolve_in_child(std::uint64_t addr) {
  const std::uint64_t vpn = vpn_of(reinterpret_cast<void*>(addr));
  char* page = page_addr(vpn);
  std::atomic<std::uint64_t>& word = rt_.pt[vpn];
  const std::uint64_t s = word.load(std::memory_order_acquire);
  const void* src = kZeroPage;
  switch (ps::kind(s)) {
    case Kind::Untouched:
      break;
    case Kind::Remote: {
      if (!rt_.fork_snapshot)
        detail::fatal("a forked child cannot read far memory over %s (only the embedded shm server "
                      "keeps a snapshot for children); exec() after fork, or use FARMEM_BACKEND=shm",
                      rt_.cfg.backend.c_str());
      child_qp_->post_read(vpn * 4096, staging_, 4096, vpn);
      child_qp_->submit();
      net::Completion done;
      while (child_qp_->poll(&done, 1) == 0) child_qp_->wait(200);
      src = staging_;
      break;
    }
    case Kind::Resident:  // mapped already (copied at fork), unless dropped since: zeros
      break;
    default:
      detail::fatal("forked child: far page %llu was in flight at fork (runtime bug)",
                    static_cast<unsigned long long>(vpn));
  }
  if (int e = copy_page(uffd_.fd, page, src); e == EEXIST) wake(uffd_.fd, page, 4096);
  else if (e != 0)
    detail::fatal("forked child: cannot fill a page of the transparent region (UFFDIO_COPY: %s)",
                  std::strerror(e));
  word.store(ps::make(Kind::Resident, 0, ps::kAccessed | ps::kDirty), std::memory_order_release);
}

void Region::child_loop() {
  detail::g_internal_alloc = 1;
  rt_.handler_clock.start();
  child_handler_up_.store(1, std::memory_order_release);
  while (!child_serving_done_.load(std::memory_order_acquire)) detail::futex_wait(&child_serving_done_, 0, 1000000);
  while (!stop_.load(std::memory_order_relaxed)) {
    park_if_asked();
    pollfd p[2] = {{uffd_.fd, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
    if (poll(p, 2, 1000) <= 0) continue;
    if (p[1].revents & POLLIN) {
      std::uint64_t v;
      if (read(wake_fd_, &v, sizeof v) < 0) {
      }
    }
    if (p[0].revents & POLLIN) serve_child_faults(64);
  }
}

}  // namespace farmem::hw
