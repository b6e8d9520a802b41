// Transparent faults: the handler thread (FARMEM_HW_FAULTS=thread) or the
// faulting thread's SIGBUS handler (signal) finds the page, fetches it with
// the pages a stride predicts, and puts it in (UFFDIO_COPY, or UFFDIO_MOVE of
// a frame's page); a quick return marks its group hot (FARMEM_HW_KEEP_HOT).
#include "hw/region.hpp"

#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "mem/page_state.hpp"
#include "runtime/fatal.hpp"
#include "runtime/runtime.hpp"
#include "sched/sched.hpp"

namespace farmem::hw {

using mem::Kind;
namespace ps = mem::ps;

namespace {
constexpr unsigned kAheadStrided = 7;      // after faults at a larger stride (each its own UFFDIO_COPY)
constexpr std::int64_t kMaxStride = 64;    // pages; a larger step is not a pattern worth fetching for
constexpr std::uint64_t kSpinNs = 30000;   // the handler thread polls this long after a fault before sleeping
// SIGBUS mode: the region whose faults this process's SIGBUS handler serves,
// and the handler that was there before (called for every other SIGBUS).
std::atomic<Region*> g_signal_region{nullptr};
struct sigaction g_prev_sigbus;

void on_sigbus(int sig, siginfo_t* si, void* uc) {
  Region* r = g_signal_region.load(std::memory_order_acquire);
  const auto addr = reinterpret_cast<std::uint64_t>(si->si_addr);
  if (r != nullptr && r->in_thread() && si->si_code == BUS_ADRERR && r->serves(addr)) {
    // x86-64: bit 1 of the page-fault error code says the access was a write.
    const bool write = (static_cast<ucontext_t*>(uc)->uc_mcontext.gregs[REG_ERR] & 2) != 0;
    const int saved = errno;
    // A uthread may park in here and the next one fault: SIGBUS must stay
    // deliverable even when whoever installed this handler blocked it for its
    // duration (ThreadSanitizer blocks every signal). The return restores the mask.
    sigset_t bus;
    sigemptyset(&bus);
    sigaddset(&bus, SIGBUS);
    pthread_sigmask(SIG_UNBLOCK, &bus, nullptr);
    r->fault_in_thread(addr, write);
    errno = saved;
    return;
  }
  if (g_prev_sigbus.sa_flags & SA_SIGINFO) {
    g_prev_sigbus.sa_sigaction(sig, si, uc);
  } else if (g_prev_sigbus.sa_handler != SIG_DFL && g_prev_sigbus.sa_handler != SIG_IGN) {
    g_prev_sigbus.sa_handler(sig);
  } else {  // the default action: returning re-runs the access, which now kills
    signal(SIGBUS, SIG_DFL);
  }
}
}  // namespace

void Region::install_sigbus_handler() {
  // No SA_ONSTACK: a uthread's fault runs on its own stack. SA_NODEFER: a
  // uthread may park inside the handler, and the next one on this kernel
  // thread may fault too.
  struct sigaction sa {};
  sa.sa_sigaction = on_sigbus;
  sa.sa_flags = SA_SIGINFO | SA_NODEFER | SA_RESTART;
  sigemptyset(&sa.sa_mask);
  g_signal_region.store(this, std::memory_order_release);
  sigaction(SIGBUS, &sa, &g_prev_sigbus);
}

void Region::fill_from_frame(std::uint64_t vpn, std::uint32_t f) {
  char* page = page_addr(vpn);
  int e = move_page(uffd_.fd, page, rt_.frame_addr(f));
  if (e == EBUSY || e == EINVAL) {
    // The frame's page is shared with a forked child (or the mapping was
    // mprotect()ed): copy the bytes instead, then empty the slot as a move would.
    e = copy_page(uffd_.fd, page, rt_.frame_addr(f));
    if (e == 0) detail::kernel_madvise(rt_.frame_addr(f), 4096, MADV_DONTNEED);
  }
  if (e == EEXIST) return;  // mapped already: keep what is there, as fill_by_copy does; the slot stays full
  if (e != 0)
    detail::fatal("cannot map a page into the transparent region at %p: %s", static_cast<void*>(page),
                  std::strerror(e));
  rt_.slot_full[f].store(0, std::memory_order_relaxed);
}

unsigned Region::claim_ahead(detail::Core& c, std::uint64_t vpn, std::int64_t stride, std::uint64_t* ahead,
                             std::uint32_t* frames, std::uint64_t* flags, unsigned max) {
  unsigned n = 0;
  const std::uint64_t end = first_vpn_ + bytes_ / 4096;
  for (std::uint64_t p = vpn + stride; n < max && p >= first_vpn_ && p < end && c.spare_frame == 0;
       p += stride) {
    if (!watched(p - first_vpn_ + 1)) break;  // the kernel fills pages there, not us
    std::uint64_t s = rt_.pt[p].load(std::memory_order_acquire);
    if (ps::kind(s) != Kind::Remote && ps::kind(s) != Kind::Untouched) break;
    if (!rt_.pt[p].compare_exchange_strong(s, ps::make(Kind::Fetching, 0, 0), std::memory_order_acq_rel)) break;
    const std::uint32_t g = detail::try_take_frame(c);
    if (g == 0 || rt_.slot_full[g].load(std::memory_order_relaxed)) {
      rt_.pt[p].store(s, std::memory_order_release);  // give the claim back
      c.spare_frame = g;
      break;
    }
    ahead[n] = p;
    frames[n] = g;
    flags[n] = (track_dirty_ ? 0 : ps::kDirty) | (ps::kind(s) == Kind::Remote ? ps::kHasRemote : 0);
    ++n;
  }
  return n;
}

// One fault: give page `addr` its bytes, or say it must wait (being written
// back, or being brought in by another thread).
bool Region::resolve(std::uint64_t addr, bool write, char* staging, unsigned staging_pages) {
  detail::Core& c = detail::this_core();
  const std::uint64_t vpn = vpn_of(reinterpret_cast<void*>(addr));
  char* page = page_addr(vpn);
  std::atomic<std::uint64_t>& word = rt_.pt[vpn];
  for (;;) {
    std::uint64_t s = word.load(std::memory_order_acquire);
    switch (ps::kind(s)) {
      case Kind::Resident:
        if (write) {
          // A write to a page that is here but write-protected: the first write to
          // a clean page (it must be written back from now on), or a protection
          // left from an eviction that did not take it. The page is held as
          // Fetching meanwhile, so the evictor cannot pick it and protect it
          // again between our state change and our lifting the protection.
          if (!word.compare_exchange_weak(s, ps::with_kind(s, Kind::Fetching), std::memory_order_acq_rel)) continue;
          if (!(s & ps::kDirty)) c.stats.bump(c.stats.hw_dirtied);
          const int e = write_protect(uffd_.fd, page, 4096, false);  // also wakes the writer
          word.store(s | ps::kDirty, std::memory_order_release);
          if (e == 0) return true;
        }
        // Usually another fault on the same page got it in already (EEXIST). If
        // not, the application dropped the page behind our back: zeros, as the
        // kernel would give.
        if (copy_page(uffd_.fd, page, kZeroPage) == EEXIST) wake(uffd_.fd, page, 4096);
        return true;
      case Kind::Evicting:
        return false;  // once the evictor has unmapped it and marked it Remote, it is fetched again
      case Kind::Fetching:
        return false;
      case Kind::Untouched:
      case Kind::Remote: {
        const std::uint64_t t0 = detail::now_ns();
        std::uint32_t f = detail::take_frame(rt_, c);
        if (!word.compare_exchange_strong(s, ps::make(Kind::Fetching, f, 0), std::memory_order_acq_rel)) {
          c.spare_frame = f;
          continue;
        }
        const bool remote = ps::kind(s) == Kind::Remote;
        // Dirty unless tracking and read in (then it goes in write-protected).
        // Back within a budget's worth of evictions after it left: the evictor
        // chose a page the program still used, and its group is kept longer.
        if (remote) {
          const bool quick = ps::evicted_ago(s, rt_.evictions.load(std::memory_order_relaxed)) < rt_.nframes;
          if (quick) c.stats.bump(c.stats.hw_quick_refaults);
          if (keep_hot_) note_refault(vpn, quick);
        }
        const std::uint64_t flags = ps::kAccessed | (write || !track_dirty_ ? ps::kDirty : 0) | (remote ? ps::kHasRemote : 0);
        // Stride detection: three faults in a row at the same small stride.
        const std::int64_t d = static_cast<std::int64_t>(vpn - c.hw_last_vpn);
        if (d != 0 && d == c.hw_stride) {
          ++c.hw_stride_run;
        } else {
          c.hw_stride = d;
          c.hw_stride_run = 0;
        }
        c.hw_last_vpn = vpn;
        if (rt_.slot_full[f].load(std::memory_order_relaxed)) {
          // The frame's pool slot holds a page (a populated pool, or a frame that
          // far pointers used): fill it and move it in, which empties the slot.
          rt_.owner[f].store(vpn, std::memory_order_relaxed);
          if (remote) {
            detail::fetch_to(c, vpn, rt_.frame_addr(f));
          } else {
            std::memset(rt_.frame_addr(f), 0, 4096);
            c.stats.bump(c.stats.zero_fills);
          }
          fill_from_frame(vpn, f);  // a move cannot write-protect: treat it as written
          word.store(ps::make(Kind::Resident, f, flags | ps::kDirty), std::memory_order_release);
        } else {
          // The usual case: the bytes go in with UFFDIO_COPY from a staging
          // buffer (no TLB shootdown, unlike a move), with the pages that follow
          // at the faults' stride when it is steady. The frame only stands for the budget.
          std::uint64_t vpns[1 + kAhead] = {vpn}, pflags[1 + kAhead] = {flags};
          std::uint32_t frames[1 + kAhead] = {f};
          unsigned n = 1;
          if (fault_around_ && c.hw_stride_run >= 1 && c.hw_stride >= -kMaxStride && c.hw_stride <= kMaxStride &&
              staging_pages > 1 && uthread::detail::current() == nullptr)
            n += claim_ahead(c, vpn, c.hw_stride, vpns + 1, frames + 1, pflags + 1,
                             std::min(staging_pages, 1 + (c.hw_stride == 1 ? kAhead : kAheadStrided)) - 1);
          fill_by_copy(c, vpns, frames, pflags, n, staging);
          c.hw_last_vpn = vpns[n - 1];  // the next fault, one stride on, continues the run
          if (n > 1) c.stats.bump(c.stats.prefetches, n - 1);
        }
        c.stats.bump(c.stats.faults);
        c.stats.bump(c.stats.hw_fills);
        c.stats.bump(c.stats.hw_fault_ns, detail::now_ns() - t0);
        detail::record_fault(c, t0);
        return true;
      }
    }
  }
}

void Region::note_refault(std::uint64_t vpn, bool quick) {
  std::atomic<std::uint32_t>& h = heat_[(vpn - first_vpn_) / kEvictPages];
  const std::uint32_t w = h.load(std::memory_order_relaxed);
  const std::uint32_t rev = rt_.clock_revolutions.load(std::memory_order_relaxed);
  if (!quick) {  // came back late: the next quick return starts again at level 1
    if (w != 0 && !group_protected(vpn, rev)) h.store(0, std::memory_order_relaxed);
    return;
  }
  if (group_protected(vpn, rev)) return;  // its other pages coming back: one step per protection
  const unsigned level = std::min<unsigned>((w >> 28) + 1, kHeatMaxLevel);
  h.store((level << 28) | ((rev + (1u << (level - 1)) + 1) & kHeatUntilMask), std::memory_order_relaxed);
}

// Brings n claimed pages in through `staging` with one transfer and one
// UFFDIO_COPY per run of consecutive pages, and marks them resident.
void Region::fill_by_copy(detail::Core& c, const std::uint64_t* vpns, const std::uint32_t* frames,
                          const std::uint64_t* flags, unsigned n, char* staging) {
  std::uint64_t fetch[1 + kAhead];
  char* dst[1 + kAhead];
  unsigned nfetch = 0;
  for (unsigned i = 0; i < n; ++i) {
    rt_.owner[frames[i]].store(vpns[i], std::memory_order_relaxed);
    if (flags[i] & ps::kHasRemote) {
      fetch[nfetch] = vpns[i];
      dst[nfetch++] = staging + i * 4096;
    } else {
      std::memset(staging + i * 4096, 0, 4096);
      c.stats.bump(c.stats.zero_fills);
    }
  }
  const std::uint64_t t0 = detail::now_ns();
  if (nfetch == 1 && uthread::detail::current() != nullptr) detail::fetch_to(c, fetch[0], dst[0]);
  else if (nfetch > 0) detail::fetch_batch(c, fetch, dst, nfetch);
  const std::uint64_t t1 = detail::now_ns();
  c.stats.bump(c.stats.hw_fetch_ns, t1 - t0);
  // A page that is not dirty goes in write-protected: its first write faults
  // and marks it. With FARMEM_HW_DIRTY=track, pages fetched ahead are clean,
  // and so is the faulting one when it was read.
  const bool first_wp = !(flags[0] & ps::kDirty), ahead_wp = n > 1 && !(flags[1] & ps::kDirty);
  for (unsigned i = 0; i < n;) {
    std::uint64_t done = 0;
    const bool wp = i == 0 ? first_wp : ahead_wp;
    // One call per run of consecutive pages with one mode.
    unsigned run = 1;
    while (i + run < n && vpns[i + run] == vpns[i] + run && (i != 0 || first_wp == ahead_wp)) ++run;
    const int e = copy_pages(uffd_.fd, page_addr(vpns[i]), staging + i * 4096, run, &done, wp);
    i += static_cast<unsigned>(done);
    if (e == EEXIST) {
      ++i;  // mapped already (the application mapped over it): keep what is there
    } else if (e != 0) {
      detail::fatal("cannot fill a page of the transparent region at %p (UFFDIO_COPY: %s)",
                    static_cast<void*>(page_addr(vpns[i])), std::strerror(e));
    }
  }
  c.stats.bump(c.stats.hw_copy_ns, detail::now_ns() - t1);
  for (unsigned i = 0; i < n; ++i)  // the ones after the first go in cold: evicted first if unused
    rt_.pt[vpns[i]].store(ps::make(Kind::Resident, frames[i], flags[i]), std::memory_order_release);
}

// SIGBUS mode: this thread touched a page that is not there. Serve it here;
// when it must wait (another thread brings it in, or it is being written back)
// a uthread lets others run and a plain thread spins, then yields the CPU.
void Region::fault_in_thread(std::uint64_t addr, bool write) {
  detail::InternalAlloc internal;
  const std::uint64_t a = addr & ~std::uint64_t{4095};
  if (in_pool(a)) {
    serve_pool_fault(a);
    return;
  }
  detail::Core& c = detail::this_core();
  const bool in_uthread = uthread::detail::current() != nullptr;
  alignas(4096) char one[4096];  // a uthread's page: several may be in flight on one core
  char* staging = one;
  unsigned pages = 1;
  if (!in_uthread) {
    if (c.hw_staging == nullptr) {
      void* p = mmap(nullptr, (1 + kAhead) * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (p == MAP_FAILED) detail::fatal("cannot map a staging buffer for a transparent fault: %s", std::strerror(errno));
      c.hw_staging = static_cast<char*>(p);
    }
    staging = c.hw_staging;
    pages = 1 + kAhead;
  }
  for (unsigned spins = 0; !resolve(a, write, staging, pages); ++spins) {
    if (in_uthread) {
      uthread::yield();
    } else {
      detail::ack_point(c);
      if (spins < 64) detail::cpu_relax();
      else sched_yield();
    }
  }
}

// A far-pointer core touched a frame whose slot was never used: give it a page.
void Region::serve_pool_fault(std::uint64_t addr) {
  int e = copy_page(uffd_.fd, reinterpret_cast<void*>(addr), kZeroPage);
  if (e != 0 && e != EEXIST)
    detail::fatal("cannot populate a frame at 0x%llx (UFFDIO_COPY: %s)", static_cast<unsigned long long>(addr),
                  std::strerror(e));
  if (e == EEXIST) wake(uffd_.fd, reinterpret_cast<void*>(addr), 4096);
}

// fork_prepare() asks; the handler parks between faults until fork_parent().
void Region::park_if_asked() {
  if (parking_.asked()) parking_.park();
}

void Region::handler_loop() {
  detail::g_internal_alloc = 1;  // never allocate from the region we serve
  rt_.handler_clock.start();
  std::vector<std::uint64_t> retry, again;
  retry.reserve(64);
  again.reserve(64);
  uffd_msg msgs[64];
  std::uint64_t last_fault = 0;
  while (!stop_.load(std::memory_order_relaxed)) {
    park_if_asked();
    again.clear();
    for (std::uint64_t a : retry)  // bit 0: the access was a write
      if (!resolve(a & ~std::uint64_t{1}, a & 1, staging_, 1 + kAhead)) again.push_back(a);
    retry.swap(again);
    // The descriptor is non-blocking: read first. While faults keep coming (or
    // some wait for a write-back) poll it; sleep in poll() only after kSpinNs
    // without one, because waking a sleeping thread costs tens of µs here.
    ssize_t got = read(uffd_.fd, msgs, sizeof msgs);
    if (got <= 0) {
      if (!retry.empty()) {
        detail::ack_point(detail::this_core());
        detail::cpu_relax();
        continue;
      }
      if (detail::now_ns() - last_fault < kSpinNs) {
        detail::cpu_relax();
        continue;
      }
      pollfd p[2] = {{uffd_.fd, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
      int n = poll(p, 2, 100);
      if (n < 0 && errno != EINTR) break;
      if (n > 0 && (p[1].revents & POLLIN)) {
        std::uint64_t v;
        if (read(wake_fd_, &v, sizeof v) < 0) {
        }
      }
      continue;
    }
    last_fault = detail::now_ns();
    for (ssize_t i = 0; i < got / static_cast<ssize_t>(sizeof(uffd_msg)); ++i) {
      if (msgs[i].event != UFFD_EVENT_PAGEFAULT) continue;
      const std::uint64_t a = msgs[i].arg.pagefault.address & ~std::uint64_t{4095};
      const std::uint64_t flags = msgs[i].arg.pagefault.flags;
      if (flags & UFFD_PAGEFAULT_FLAG_WP) {
        // A write to a write-protected page: marked dirty and released here if
        // the page is resident; if it is being written back, the evictor wakes
        // the writer once the page is gone (Region::unmap_written), and it then
        // faults on the missing page like any other.
        if (!resolve(a, true, staging_, 1)) retry.push_back(a | 1);
        continue;
      }
      const bool write = flags & UFFD_PAGEFAULT_FLAG_WRITE;
      if (in_pool(a)) serve_pool_fault(a);
      else if (!resolve(a, write, staging_, 1 + kAhead)) retry.push_back(a | write);
    }
  }
  rt_.handler_clock.finish();
}

}  // namespace farmem::hw
