// The software page-fault path: a far deref that missed the core's TLB (or hit
// it for the first time in this scope). Walks the page table and, by the page's
// state: uses the resident frame, rescues a page the evictor picked, zero-fills a
// never-touched page, or fetches a remote page through the core's queue pair.
// It never evicts: frames come from the core's free ring, kept full by the evictor.

#include <cstring>
#include <vector>

#include "mem/page_state.hpp"
#include "transport/queue_pair.hpp"
#include "runtime/fatal.hpp"
#include "runtime/runtime.hpp"
#include "sched/sched.hpp"

namespace farmem::detail {

using mem::Kind;
namespace ps = mem::ps;

namespace {

// Waiting inside the fault path: a uthread lets others run (its scheduler acks
// shootdowns at the switch); a plain thread acks and spins.
void wait_a_little(Core& c) {
  if (uthread::detail::current() != nullptr) {
    uthread::yield();
  } else {
    ack_point(c);
    cpu_relax();
  }
}

constexpr std::uint64_t kStallLimitNs = 20ull * 1000 * 1000 * 1000;

}  // namespace

// Takes a free frame from the core's ring; waits for the evictor if it is empty.
std::uint32_t take_frame(Runtime& rt, Core& c) {
  if (c.spare_frame) {
    std::uint32_t f = c.spare_frame;
    c.spare_frame = 0;
    return f;
  }
  FreeRing& r = c.ring;
  std::uint64_t stall_start = 0, released = 0;
  for (unsigned spins = 0;; ++spins) {
    std::uint32_t h = r.head.load(std::memory_order_relaxed);
    std::uint32_t t = r.tail.load(std::memory_order_acquire);
    if (h != t) {
      std::uint32_t f = r.slots[h & (kRingSize - 1)];
      r.head.store(h + 1, std::memory_order_release);
      if (t - h <= kRingSize / 2) rt.kick_evictor();
      return f;
    }
    if (spins == 0) {
      c.stats.bump(c.stats.alloc_stalls);
      stall_start = now_ns();
      released = rt.frames_released.load(std::memory_order_relaxed);
    }
    rt.kick_evictor();
    wait_a_little(c);  // never hold up the batch that would free our frame
    if ((spins & 0xffff) == 0xffff) {
      // Only an evictor that frees nothing at all for the whole limit means a
      // deadlock; a slow one (a loaded machine, a slow server whose transport
      // has its own silence limit) is waited for.
      const std::uint64_t now = now_ns(), n = rt.frames_released.load(std::memory_order_relaxed);
      if (n != released) released = n, stall_start = now;
      else if (now - stall_start > kStallLimitNs)
        fatal("no free local frame for %llu s: open scopes pin every local page, or a thread blocked "
              "inside a scope holds up eviction; shorten scopes or raise FARMEM_LOCAL_MEM",
              static_cast<unsigned long long>(kStallLimitNs / 1000000000ull));
    }
  }
}

void record_fault(Core& c, std::uint64_t t0) {
  std::uint64_t ns = now_ns() - t0;
  auto& b = c.stats.fault_hist[hist_bucket(ns)];
  b.store(b.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
}

namespace {
// Busy-polls (acking shootdowns) until `count` completions have arrived; after
// a while sleeps in the transport's wait, so a server on this machine gets a CPU.
void await_completions(Core& c, net::QueuePair* qp, unsigned count) {
  net::Completion done[16];
  for (unsigned got = 0, spins = 0; got < count; ++spins) {
    std::size_t k = qp->poll(done, 16);
    got += static_cast<unsigned>(k);
    if (k) continue;
    ack_point(c);
    if (spins > 64) qp->wait(200);
    else cpu_relax();
  }
}
}  // namespace

// Fetches far page `vpn` into dst (a frame); returns when the bytes are there.
void fetch_to(Core& c, std::uint64_t vpn, void* dst) {
  auto* qp = static_cast<net::QueuePair*>(c.qp);
  if (uthread::detail::Uthread* u = uthread::detail::current()) {
    // Post and park; the scheduler rings the doorbell once for all the reads its
    // uthreads posted in a round, polls, and wakes us when the page is in.
    qp->post_read(vpn * kPageSize, dst, kPageSize, reinterpret_cast<std::uint64_t>(u));
    uthread::detail::park_io();
    c.stats.bump(c.stats.fetches);
    return;
  }
  qp->post_read(vpn * kPageSize, dst, kPageSize, vpn);
  qp->submit();
  await_completions(c, qp, 1);
  c.stats.bump(c.stats.fetches);
}

void fetch_batch(Core& c, const std::uint64_t* vpns, char* const* dsts, unsigned n) {
  auto* qp = static_cast<net::QueuePair*>(c.qp);
  for (unsigned i = 0; i < n; ++i) qp->post_read(vpns[i] * kPageSize, dsts[i], kPageSize, vpns[i]);
  qp->submit();
  await_completions(c, qp, n);
  c.stats.bump(c.stats.fetches);
}

std::uint32_t try_take_frame(Core& c) {
  FreeRing& r = c.ring;
  std::uint32_t h = r.head.load(std::memory_order_relaxed);
  // Keep half the ring for demand faults.
  if (r.tail.load(std::memory_order_acquire) - h <= kRingSize / 2) return 0;
  std::uint32_t f = r.slots[h & (kRingSize - 1)];
  r.head.store(h + 1, std::memory_order_release);
  return f;
}

// A frame's pool slot is filled on first use. Touch it from user mode, so the
// region's fault path (handler thread or SIGBUS) gives it a page: a transport
// writing into an empty slot from the kernel would get EFAULT in SIGBUS mode.
static void ensure_slot(Runtime& rt, std::uint32_t f) {
  if (rt.slot_full[f].load(std::memory_order_relaxed)) return;
  *static_cast<volatile char*>(rt.frame_addr(f)) = 0;
  rt.mark_slot_full(f);
}

void fetch_page(Runtime& rt, Core& c, std::uint64_t vpn, std::uint32_t f) {
  ensure_slot(rt, f);
  fetch_to(c, vpn, rt.frame_addr(f));
}

namespace {

constexpr unsigned kPrefetchPages = 8;

// Fetches remote page vpn into frame f, and, when this core's recent fetches
// were sequential, the next remote pages too: one batch, one system call.
void fetch_with_prefetch(Runtime& rt, Core& c, std::uint64_t vpn, std::uint32_t f) {
  c.seq_run = (vpn == c.last_fetch_vpn + 1) ? c.seq_run + 1 : 0;
  c.last_fetch_vpn = vpn;
  if (c.seq_run < 2 || uthread::detail::current() != nullptr) {
    fetch_page(rt, c, vpn, f);
    return;
  }
  std::uint64_t ahead[kPrefetchPages + 1] = {vpn};
  std::uint32_t frames[kPrefetchPages + 1] = {f};
  unsigned n = 0;
  for (std::uint64_t p = vpn + 1; p < vpn + 1 + kPrefetchPages && p < rt.far_pages; ++p) {
    if (rt.is_hw_page(p)) break;
    std::uint64_t s = rt.pt[p].load(std::memory_order_acquire);
    if (mem::ps::kind(s) != Kind::Remote) break;
    // Claim the page first (others wait on Fetching), then find it a frame.
    if (!rt.pt[p].compare_exchange_strong(s, ps::make(Kind::Fetching, 0, 0), std::memory_order_acq_rel))
      break;
    std::uint32_t g = try_take_frame(c);
    if (g == 0) {
      rt.pt[p].store(s, std::memory_order_release);  // give the claim back
      break;
    }
    ++n;
    ahead[n] = p;
    frames[n] = g;
  }
  char* dsts[kPrefetchPages + 1];
  for (unsigned i = 0; i <= n; ++i) {
    ensure_slot(rt, frames[i]);
    dsts[i] = rt.frame_addr(frames[i]);
  }
  fetch_batch(c, ahead, dsts, n + 1);
  for (unsigned i = 1; i <= n; ++i) {  // installed cold: CLOCK takes them back if unused
    rt.owner[frames[i]].store(ahead[i], std::memory_order_relaxed);
    rt.pt[ahead[i]].store(ps::make(Kind::Resident, frames[i], rt.exclusive_loads ? ps::kDirty : ps::kHasRemote),
                          std::memory_order_release);
  }
  c.last_fetch_vpn = vpn + n;
  c.stats.bump(c.stats.prefetches, n);
}

// Pins a page whose hazard could not be published (scope holds too many pages).
void pin_overflow(Runtime& rt, Core& c, std::uint64_t vpn) {
  if (c.pins == nullptr) c.pins = new std::vector<std::uint64_t>();
  rt.pt[vpn].fetch_add(ps::kPinOne, std::memory_order_acq_rel);
  static_cast<std::vector<std::uint64_t>*>(c.pins)->push_back(vpn);
  ++c.npins;
}

// Publishes "this core holds page vpn until its scope ends" for the evictor.
void publish(Runtime& rt, Core& c, std::uint64_t vpn) {
  std::uint32_t n = c.nhazards.load(std::memory_order_relaxed);
  if (n < kMaxHazards) {
    c.hazards[n].store(vpn, std::memory_order_relaxed);
    c.nhazards.store(n + 1, std::memory_order_release);
  } else {
    pin_overflow(rt, c, vpn);
  }
}

}  // namespace

char* deref_slow(Core& c, std::uint64_t addr, bool write) {
  Runtime& rt = current();
  const std::uint64_t vpn = addr >> kPageShift;
  TlbEntry& e = c.tlb[vpn & (kTlbEntries - 1)];
  if (vpn == 0 || vpn >= rt.far_pages || rt.is_hw_page(vpn))
    fatal("far pointer 0x%llx is outside far memory (null or corrupt far pointer)",
          static_cast<unsigned long long>(addr));

  if (e.vpn == vpn) {  // cached translation: first use in this scope, or first write
    if (e.scope != c.scope_serial) {
      publish(rt, c, vpn);
      e.scope = c.scope_serial;
    }
    if (write && !e.writable) {
      rt.pt[vpn].fetch_or(ps::kDirty, std::memory_order_acq_rel);
      e.writable = 1;
    }
    return e.frame + (addr & kPageMask);
  }

  std::atomic<std::uint64_t>& word = rt.pt[vpn];
  const std::uint64_t touch = ps::kAccessed | (write ? ps::kDirty : 0);
  std::uint64_t frame = 0;
  for (;;) {
    std::uint64_t s = word.load(std::memory_order_acquire);
    switch (ps::kind(s)) {
      case Kind::Resident: {
        if ((s & touch) != touch &&
            !word.compare_exchange_weak(s, s | touch, std::memory_order_acq_rel))
          continue;
        frame = ps::frame(s);
        break;
      }
      case Kind::Evicting: {  // picked by the evictor but not gone yet: take it back
        if (s & ps::kWriting) {
          // Being copied out: ask the evictor to keep it and wait for the copy.
          if (!(s & ps::kWanted)) word.compare_exchange_weak(s, s | ps::kWanted, std::memory_order_acq_rel);
          wait_a_little(c);
          continue;
        }
        if (!word.compare_exchange_weak(s, ps::with_kind(s, Kind::Resident) | touch,
                                        std::memory_order_acq_rel))
          continue;
        c.stats.bump(c.stats.rescues);
        frame = ps::frame(s);
        break;
      }
      case Kind::Untouched:
      case Kind::Remote: {
        if (rt.forked_child)
          fatal("far pointers cannot bring pages in after fork(): only the parent runs the evictor; "
                "exec() in the child, or keep children to transparent (farmem_malloc) memory");
        const std::uint64_t t0 = now_ns();
        std::uint32_t f = take_frame(rt, c);
        if (!word.compare_exchange_strong(s, ps::make(Kind::Fetching, f, 0),
                                          std::memory_order_acq_rel)) {
          c.spare_frame = f;  // someone else moved the page; retry
          continue;
        }
        std::uint64_t flags = touch;
        if (ps::kind(s) == Kind::Untouched) {
          std::memset(rt.frame_addr(f), 0, kPageSize);  // fills an empty slot from user mode
          c.stats.bump(c.stats.zero_fills);
        } else {
          fetch_with_prefetch(rt, c, vpn, f);
          flags |= rt.exclusive_loads ? ps::kDirty : ps::kHasRemote;
        }
        rt.owner[f].store(vpn, std::memory_order_relaxed);
        rt.mark_slot_full(f);
        word.store(ps::make(Kind::Resident, f, flags), std::memory_order_release);
        c.stats.bump(c.stats.faults);
        record_fault(c, t0);
        frame = f;
        break;
      }
      case Kind::Fetching:  // another core or uthread is bringing it in
        wait_a_little(c);
        continue;
    }
    break;
  }
  publish(rt, c, vpn);
  e.vpn = vpn;
  e.frame = rt.frame_addr(frame);
  e.scope = c.scope_serial;
  e.writable = write;
  return e.frame + (addr & kPageMask);
}

}  // namespace farmem::detail
