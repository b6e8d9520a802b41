// Eviction on a dedicated core (see evictor.hpp for the pipeline).
#include "evict/evictor.hpp"

#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "hw/region.hpp"
#include "runtime/tsan.hpp"
#include "mem/page_state.hpp"
#include "runtime/fatal.hpp"
#include "runtime/live_stats.hpp"
#include "runtime/runtime.hpp"

namespace farmem::evict {

using detail::Core;
using detail::kMaxCores;
using detail::kOffline;
using detail::kPageSize;
using detail::kRingSize;
using mem::Kind;
namespace ps = mem::ps;

namespace {
constexpr std::size_t kMaxPendingBatches = 4;

}  // namespace

Evictor::Evictor(detail::Runtime& rt) : rt_(rt) {
  free_.reserve(rt.nframes);
  for (std::uint32_t f = rt.nframes; f >= 1; --f) free_.push_back(f);  // low frames first
  high_wm_ = std::clamp<std::uint32_t>(rt.nframes / 32, 2 * rt.cfg.evict_batch, 16384);
  qp_ = rt.transport->create_qp();
  publish_free_count();
}

Evictor::~Evictor() {
  stop();
  if (statm_fd_ >= 0) close(statm_fd_);
}

void Evictor::start() {
  thread_ = std::thread([this] { loop(); });
  long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
  int cpu = rt_.cfg.evictor_cpu >= 0 ? rt_.cfg.evictor_cpu : (ncpu > 1 ? static_cast<int>(ncpu - 1) : -1);
  if (cpu >= 0) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    pthread_setaffinity_np(thread_.native_handle(), sizeof set, &set);
  }
  pthread_setname_np(thread_.native_handle(), "farmem-evictor");
}

void Evictor::stop() {
  if (!thread_.joinable()) return;
  stop_.store(true);
  rt_.kick_word.fetch_add(1);
  detail::futex_wake(&rt_.kick_word);
  thread_.join();
}

std::uint64_t Evictor::free_range(std::uint64_t first, std::uint64_t pages, bool release) {
  std::uint64_t ticket;
  {
    std::lock_guard<std::mutex> g(frees_mu_);
    ticket = ++next_ticket_;
    frees_.push_back({first, pages, ticket, release});
  }
  frees_pending_.store(true, std::memory_order_release);
  rt_.kick_evictor();
  return ticket;
}

void Evictor::wait_freed(std::uint64_t ticket) {
  const auto t = static_cast<std::uint32_t>(ticket);
  for (;;) {
    std::uint32_t d = frees_done_.load(std::memory_order_acquire);
    if (static_cast<std::int32_t>(d - t) >= 0) return;
    rt_.kick_evictor();
    detail::futex_wait(&frees_done_, d, 1000000);
  }
}

void Evictor::pause() {
  if (!thread_.joinable()) return;
  parking_.ask(
      "evictor",
      "a thread holds a far-memory scope open and never acknowledges the eviction in flight; "
      "end scopes before fork()",
      [&] {
        rt_.kick_word.fetch_add(1);
        detail::futex_wake(&rt_.kick_word);
      },
      [] {
        // fork() called inside a scope: the batch being drained waits for this core too.
        if (detail::Core* c = detail::tls_core) detail::ack_point(*c);
      });
}

void Evictor::resume() { parking_.release(); }

void Evictor::forget_thread() {
  // The thread does not exist in a forked child; drop the handle without a join.
  new (&thread_) std::thread();
  parking_.forget();
}

void Evictor::publish_free_count() {
  std::uint64_t n = free_.size();
  std::uint32_t hwm = rt_.core_hwm.load(std::memory_order_acquire);
  for (std::uint32_t i = 0; i < hwm; ++i) {
    Core& c = rt_.cores[i];
    if (c.life.load(std::memory_order_acquire) != 1) continue;
    n += c.ring.tail.load(std::memory_order_relaxed) - c.ring.head.load(std::memory_order_relaxed);
  }
  free_count_.store(n, std::memory_order_relaxed);
}

void Evictor::release_frame(std::uint32_t f) {
  if (f == 0) return;  // a kernel-filled page from an unwatched chunk held none
  rt_.owner[f].store(0, std::memory_order_relaxed);
  free_.push_back(f);
  count_frame_freed();
}

// Progress for the fault path's stall limit (fault.cc): a frame is back.
void Evictor::count_frame_freed() {
  rt_.frames_released.store(rt_.frames_released.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
}

// The oldest batch is acknowledged: finish it and forget it.
void Evictor::finish_front() {
  finalize(pending_.front());
  pending_pages_ -= pending_.front().victims.size();
  pending_.pop_front();
}

// Waits for every batch in flight and finishes it.
void Evictor::drain_pending() {
  while (!pending_.empty()) {
    wait_acked(pending_.front().gen);
    finish_front();
  }
}

void Evictor::loop() {
  detail::g_internal_alloc = 1;  // never allocate from the transparent region
  rt_.evictor_clock.start();
  unsigned idle = 0;
  while (!stop_.load(std::memory_order_relaxed)) {
    if (parking_.asked()) {
      drain_pending();
      parking_.park();
      continue;
    }
    maybe_publish();
    bool progress = reclaim_dead_cores();
    progress |= refill_rings();
    if (frees_pending_.load(std::memory_order_acquire)) progress |= process_frees();
    progress |= account_unwatched();
    if (free_.size() + pending_pages_ < high_wm_ && pending_.size() < kMaxPendingBatches)
      progress |= select_batch();
    while (!pending_.empty() && acked(pending_.front().gen)) {
      finish_front();
      progress = true;
    }
    if (progress) {
      idle = 0;
      publish_free_count();
    } else {
      idle_wait(++idle);
    }
  }
  rt_.evictor_clock.finish();
}

// Live statistics (runtime/live_stats.hpp): the evictor refreshes the page
// every live::kPeriodNs, and the settings text when what it shows changed.
void Evictor::maybe_publish() {
  if (!rt_.live) return;
  const std::uint64_t now = detail::now_ns();
  if (now < next_publish_ns_) return;
  next_publish_ns_ = now + live::kPeriodNs;
  const bool connected = rt_.transport->connected();
  const bool has_hw = rt_.hw.load(std::memory_order_acquire) != nullptr;
  const bool info = connected != info_connected_ || has_hw != info_hw_;
  info_connected_ = connected;
  info_hw_ = has_hw;
  detail::collect_live(rt_, rt_.live->next(), info);
  rt_.live->publish();
}

void Evictor::idle_wait(unsigned idle) {
  if (idle < 2000) {
    detail::cpu_relax();
    return;
  }
  publish_free_count();
  // Sleep until a core kicks us; short if batches wait for acks from busy cores.
  std::uint32_t k = rt_.kick_word.load();
  rt_.evictor_sleeping.store(1, std::memory_order_seq_cst);
  bool rings_low = false;
  std::uint32_t hwm = rt_.core_hwm.load(std::memory_order_acquire);
  for (std::uint32_t i = 0; i < hwm && !rings_low; ++i) {
    Core& c = rt_.cores[i];
    if (c.life.load(std::memory_order_acquire) == 0) continue;
    rings_low = c.life.load() == 2 ||
                c.ring.tail.load(std::memory_order_relaxed) - c.ring.head.load(std::memory_order_seq_cst) <
                    kRingSize / 2;
  }
  if (!rings_low || free_.empty())
    detail::futex_wait(&rt_.kick_word, k, pending_.empty() ? 2000000 : 50000);
  rt_.evictor_sleeping.store(0, std::memory_order_relaxed);
}

bool Evictor::reclaim_dead_cores() {
  bool any = false;
  std::uint32_t hwm = rt_.core_hwm.load(std::memory_order_acquire);
  for (std::uint32_t i = 0; i < hwm; ++i) {
    Core& c = rt_.cores[i];
    if (c.life.load(std::memory_order_acquire) != 2) continue;
    for (std::uint32_t h = c.ring.head.load(), t = c.ring.tail.load(); h != t; ++h)
      free_.push_back(c.ring.slots[h & (kRingSize - 1)]);
    c.ring.head.store(0);
    c.ring.tail.store(0);
    if (c.spare_frame) free_.push_back(c.spare_frame);
    c.spare_frame = 0;
    c.nhazards.store(0);
    c.life.store(0, std::memory_order_release);
    any = true;
  }
  return any;
}

// Fair refill: first every ring up to half (starting from a rotating core, so
// a core that faults a lot cannot starve the others when frames are scarce),
// then every ring to full.
bool Evictor::refill_rings() {
  bool any = false;
  std::uint32_t hwm = rt_.core_hwm.load(std::memory_order_acquire);
  if (hwm == 0) return false;
  const std::uint32_t start = refill_rr_++ % hwm;
  for (std::uint32_t target : {kRingSize / 2, kRingSize}) {
    for (std::uint32_t k = 0; k < hwm && !free_.empty(); ++k) {
      Core& c = rt_.cores[(start + k) % hwm];
      if (c.life.load(std::memory_order_acquire) != 1) continue;
      std::uint32_t h = c.ring.head.load(std::memory_order_acquire);
      std::uint32_t t = c.ring.tail.load(std::memory_order_relaxed);
      if (t - h >= target) continue;
      for (std::uint32_t n = target - (t - h); n > 0 && !free_.empty(); --n, ++t) {
        c.ring.slots[t & (kRingSize - 1)] = free_.back();
        free_.pop_back();
      }
      c.ring.tail.store(t, std::memory_order_release);
      any = true;
    }
  }
  return any;
}

// A transparent victim takes the other resident pages of its group
// (hw::Region::kEvictPages) with it: they are write-protected and unmapped as
// one range (a kernel TLB shootdown a group, not a page). The region has no
// accessed bits to consult (the application's loads and stores never reach the
// runtime), so the group's hot pages leave too: the smaller the group, the
// fewer of them.
void Evictor::take_hw_group(Batch& b, std::uint64_t vpn) {
  constexpr std::uint64_t kGroup = hw::Region::kEvictPages;
  const std::uint64_t first = rt_.hw_first.load(std::memory_order_relaxed);
  const std::uint64_t end = first + rt_.hw_pages.load(std::memory_order_relaxed);
  const std::uint64_t lo = first + ((vpn - first) & ~(kGroup - 1));
  for (std::uint64_t p = lo; p < std::min(lo + kGroup, end); ++p) {
    if (p == vpn) continue;
    std::atomic<std::uint64_t>& word = rt_.pt[p];
    std::uint64_t s = word.load(std::memory_order_acquire);
    if (ps::kind(s) != Kind::Resident || ps::pins(s) != 0) continue;
    if (word.compare_exchange_strong(s, ps::with_kind(s, Kind::Evicting), std::memory_order_acq_rel))
      b.victims.push_back({p, static_cast<std::uint32_t>(ps::frame(s))});
  }
}

std::uint64_t Evictor::anon_rss_pages() {
  if (statm_fd_ < 0) statm_fd_ = open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
  char buf[128];
  const ssize_t got = statm_fd_ < 0 ? -1 : pread(statm_fd_, buf, sizeof buf - 1, 0);
  if (got <= 0) return 0;
  // Parsed without the locale, which under the shim lives in the region: the
  // evictor must never fault on it.
  std::uint64_t field[3];
  detail::parse_u64_fields(buf, static_cast<std::size_t>(got), field, 3);
  const std::uint64_t resident = field[1], shared = field[2];
  return resident > shared ? resident - shared : 0;
}

bool Evictor::account_unwatched() {
  hw::Region* r = rt_.hw.load(std::memory_order_acquire);
  if (r == nullptr || !r->lazy()) return false;
  const std::uint64_t now = detail::now_ns();
  if (now < next_account_ns_) return false;
  const std::uint64_t anon = anon_rss_pages();
  const std::uint64_t step = std::max<std::uint64_t>(rt_.nframes / 16, 64);
  // Growth of anonymous memory since the scan is taken to be kernel-filled
  // region pages (an overestimate: the rest of the heap grows too), until it
  // is large enough to be worth an exact scan.
  if (anon_at_scan_ == 0 || anon >= anon_at_scan_ + step || anon + step <= anon_at_scan_) {
    unwatched_scanned_ = r->scan_unwatched();
    anon_at_scan_ = anon;
  }
  unwatched_ = unwatched_scanned_ + (anon > anon_at_scan_ ? anon - anon_at_scan_ : 0);
  const std::uint64_t target = std::min<std::uint64_t>(unwatched_, rt_.nframes);
  bool changed = false;
  // No frame left to stand for them and a quarter of the budget over: the
  // program outruns us. Its new memory goes through userfaultfd from now on,
  // where a fault waits for a frame.
  const std::uint64_t covered = reserved_.size() + free_.size();
  if (!r->throttled() && unwatched_ > covered + std::max<std::uint64_t>(rt_.nframes / 4, 512) &&
      pending_.size() < kMaxPendingBatches) {
    Batch b;
    std::vector<std::uint64_t> vpns;
    r->throttle(vpns);
    for (std::uint64_t v : vpns) b.victims.push_back({v, 0});
    unwatched_scanned_ = r->scan_unwatched();
    anon_at_scan_ = anon;
    unwatched_ = unwatched_scanned_ + vpns.size();
    if (!b.victims.empty()) shoot_down(std::move(b));
    changed = true;
  }
  while (reserved_.size() < target && !free_.empty()) {
    reserved_.push_back(free_.back());
    free_.pop_back();
    changed = true;
  }
  while (reserved_.size() > target) {
    free_.push_back(reserved_.back());
    reserved_.pop_back();
    changed = true;
    count_frame_freed();  // given back for a kernel page that left
  }
  if (reserved_.size() > rt_.hw_reserved_max.load(std::memory_order_relaxed))
    rt_.hw_reserved_max.store(reserved_.size(), std::memory_order_relaxed);
  // Look again before the program could have filled the free frames left, at
  // the kernel's first-touch rate (about 1 GB/s): between 1 and 50 ms.
  const std::uint64_t headroom_ns = std::uint64_t{free_.size()} * kPageSize;
  next_account_ns_ = now + std::clamp<std::uint64_t>(headroom_ns, 1000000, 50000000);
  return changed;
}

bool Evictor::take_unwatched(Batch& b) {
  hw::Region* r = rt_.hw.load(std::memory_order_acquire);
  if (r == nullptr || !r->lazy() || unwatched_scanned_ == 0) return false;
  std::vector<std::uint64_t> vpns;
  std::size_t n = r->watch_next(vpns);
  if (n == 0) {  // the last scan is stale: look again
    unwatched_scanned_ = r->scan_unwatched();
    anon_at_scan_ = anon_rss_pages();
    n = r->watch_next(vpns);
  }
  for (std::uint64_t v : vpns) b.victims.push_back({v, 0});
  unwatched_scanned_ -= std::min<std::uint64_t>(n, unwatched_scanned_);
  anon_at_scan_ -= std::min<std::uint64_t>(n, anon_at_scan_);  // they leave RSS when unmapped
  next_account_ns_ = 0;  // give back their reserved frames soon
  return n > 0;
}

bool Evictor::select_batch() {
  Batch b;
  b.victims.reserve(rt_.cfg.evict_batch);
  const std::uint64_t n = rt_.nframes;
  // Kernel-filled pages of unwatched chunks leave first (the chunk lowest in
  // address order first): they were never taken back since the kernel filled
  // them, where a tracked page was faulted in, so touched again, since.
  const bool unwatched_first = unwatched_scanned_ > 0;
  if (unwatched_first) take_unwatched(b);
  std::size_t want = rt_.cfg.evict_batch;
  hw::Region* region = rt_.hw.load(std::memory_order_acquire);
  // Protected groups are passed over, but at most a quarter of the frames in
  // a pass: past that, so much looks hot that the guess is worth little, and
  // something must leave anyway.
  std::uint64_t passed_over = 0;
  for (std::uint64_t scanned = 0; scanned < 2 * n && b.victims.size() < want; ++scanned) {
    std::uint32_t f = static_cast<std::uint32_t>(hand_++ % n) + 1;
    if (f == 1) rt_.clock_revolutions.store(static_cast<std::uint32_t>(hand_ / n), std::memory_order_relaxed);
    std::uint64_t vpn = rt_.owner[f].load(std::memory_order_relaxed);
    if (vpn == 0) continue;
    std::atomic<std::uint64_t>& word = rt_.pt[vpn];
    std::uint64_t s = word.load(std::memory_order_acquire);
    if (ps::kind(s) != Kind::Resident || ps::frame(s) != f || ps::pins(s) != 0) continue;
    if (s & ps::kAccessed) {  // second chance
      word.compare_exchange_strong(s, s & ~ps::kAccessed, std::memory_order_acq_rel);
      continue;
    }
    const bool hw = rt_.is_hw_page(vpn);
    if (hw && region != nullptr && passed_over < n / 4 &&
        region->group_protected(vpn, rt_.clock_revolutions.load(std::memory_order_relaxed))) {
      ++passed_over;
      continue;
    }
    if (!word.compare_exchange_strong(s, ps::with_kind(s, Kind::Evicting), std::memory_order_acq_rel)) continue;
    b.victims.push_back({vpn, f});
    if (hw) {
      take_hw_group(b, vpn);
      // A transparent batch costs a few TLB shootdowns whatever its size: keep
      // choosing groups until it is as large as one 2 MiB block was, so it
      // frees as many frames at once (fault-around takes only from a ring at
      // least half full).
      want = std::max<std::size_t>(want, kHwBatchPages);
    }
  }
  if (passed_over) rt_.hw_hot_passes.fetch_add(passed_over, std::memory_order_relaxed);
  if (b.victims.empty() && !unwatched_first) take_unwatched(b);
  if (b.victims.empty()) return false;
  shoot_down(std::move(b));
  return true;
}

// The shootdown: cores flush their TLBs when they see the new generation; the
// batch waits among the pending ones for their acknowledgements.
void Evictor::shoot_down(Batch&& b) {
  b.gen = detail::g_shootdown_gen.fetch_add(1, std::memory_order_seq_cst) + 1;
  rt_.shootdowns.fetch_add(1, std::memory_order_relaxed);
  pending_pages_ += b.victims.size();
  pending_.push_back(std::move(b));
}

bool Evictor::acked(std::uint64_t gen) const {
  std::uint32_t hwm = rt_.core_hwm.load(std::memory_order_acquire);
  for (std::uint32_t i = 0; i < hwm; ++i) {
    const Core& c = rt_.cores[i];
    if (c.life.load(std::memory_order_acquire) != 1) continue;
    std::uint64_t a = c.ack.load(std::memory_order_seq_cst);
    if ((a & kOffline) == 0 && a < gen) return false;
  }
  return true;
}

void Evictor::wait_acked(std::uint64_t gen) const {
  while (!acked(gen)) {
    if (stop_.load(std::memory_order_relaxed)) return;
    detail::cpu_relax();
  }
}

std::vector<std::uint64_t> Evictor::collect_hazards() const {
  std::vector<std::uint64_t> hz;
  std::uint32_t hwm = rt_.core_hwm.load(std::memory_order_acquire);
  for (std::uint32_t i = 0; i < hwm; ++i) {
    const Core& c = rt_.cores[i];
    if (c.life.load(std::memory_order_acquire) != 1) continue;
    std::uint32_t n = std::min<std::uint32_t>(c.nhazards.load(std::memory_order_acquire),
                                              detail::kMaxHazards);
    for (std::uint32_t k = 0; k < n; ++k) hz.push_back(c.hazards[k].load(std::memory_order_relaxed));
  }
  std::sort(hz.begin(), hz.end());
  return hz;
}

void Evictor::finalize(Batch& b) {
  const std::vector<std::uint64_t> hz = collect_hazards();
  std::vector<Victim> dirty;
  for (const Victim& v : b.victims) {
    std::atomic<std::uint64_t>& word = rt_.pt[v.vpn];
    for (;;) {
      std::uint64_t s = word.load(std::memory_order_acquire);
      if (ps::kind(s) != Kind::Evicting || ps::frame(s) != v.frame) break;  // rescued by a core
      const bool hw = rt_.is_hw_page(v.vpn);
      if (!hw && (ps::pins(s) != 0 || std::binary_search(hz.begin(), hz.end(), v.vpn))) {
        if (word.compare_exchange_strong(s, ps::with_kind(s, Kind::Resident), std::memory_order_acq_rel)) {
          rt_.evictor_rescues.fetch_add(1, std::memory_order_relaxed);
          break;
        }
        continue;
      }
      if ((s & ps::kDirty) || hw) {
        // From here no core may touch the frame until the copy is done. A
        // transparent page always goes this way: even a clean one must leave
        // the region under write-protection (Region::Leaving).
        if (!word.compare_exchange_strong(s, s | ps::kWriting, std::memory_order_acq_rel)) continue;
        dirty.push_back(v);
        break;
      }
      // Clean: the remote copy (if any) is current; no write.
      std::uint64_t next = (s & ps::kHasRemote) ? ps::make(Kind::Remote, 0, ps::kHasRemote)
                                                : ps::make(Kind::Untouched, 0, 0);
      if (word.compare_exchange_strong(s, next, std::memory_order_acq_rel)) {
        release_frame(v.frame);
        rt_.clean_drops.fetch_add(1, std::memory_order_relaxed);
        rt_.evictions.fetch_add(1, std::memory_order_relaxed);
        if (next & ps::kHasRemote) rt_.to_remote.fetch_add(1, std::memory_order_relaxed);
        break;
      }
    }
  }
  if (dirty.empty()) return;
  // Transparent pages are written back straight from the region, write-protected
  // meanwhile, then unmapped together (hw::Region::Leaving): a few kernel TLB
  // shootdowns a batch instead of one a page. Far-pointer pages go from their frames.
  hw::Region* region = rt_.hw.load(std::memory_order_acquire);
  hw::Region::Leaving leaving;
  for (const Victim& v : dirty)
    if (rt_.is_hw_page(v.vpn)) leaving.vpns.push_back(v.vpn);
  const std::uint64_t t0 = detail::now_ns();
  if (!leaving.vpns.empty()) region->protect(leaving);
  const std::uint64_t t1 = detail::now_ns();
  {
    [[maybe_unused]] detail::KernelOrderedReads ordered;  // the region's pages are write-protected: no write races these reads
    std::size_t writes = 0;
    for (std::size_t i = 0; i < dirty.size(); ++i) {
      const Victim& v = dirty[i];
      if (!(rt_.pt[v.vpn].load(std::memory_order_acquire) & ps::kDirty)) continue;  // clean transparent page
      char* src = rt_.is_hw_page(v.vpn) ? region->page_addr(v.vpn) : rt_.frame_addr(v.frame);
      qp_->post_write(v.vpn * kPageSize, src, kPageSize, i);
      ++writes;
    }
    qp_->submit();
    net::Completion done[64];
    for (std::size_t got = 0; got < writes;) {
      std::size_t n = qp_->poll(done, 64);
      if (n == 0) qp_->wait(200);
      got += n;
    }
  }
  const std::uint64_t t2 = detail::now_ns();
  if (!leaving.vpns.empty()) {
    region->unmap_written(leaving);  // wakes writers that waited
    // Where a transparent batch's time goes (the write-back is shared with the
    // batch's far-pointer pages, if any).
    rt_.hw_evicted.fetch_add(leaving.vpns.size(), std::memory_order_relaxed);
    rt_.hw_protect_ns.fetch_add(t1 - t0, std::memory_order_relaxed);
    rt_.hw_writeback_ns.fetch_add(t2 - t1, std::memory_order_relaxed);
    rt_.hw_unmap_ns.fetch_add(detail::now_ns() - t2, std::memory_order_relaxed);
  }
  for (const Victim& v : dirty) {
    std::atomic<std::uint64_t>& word = rt_.pt[v.vpn];
    std::uint64_t s = word.load(std::memory_order_acquire);
    const bool hw = rt_.is_hw_page(v.vpn);
    for (;;) {
      if ((s & ps::kWanted) && !hw) {  // a far-pointer core wants it: keep it, now clean
        const std::uint64_t keep =
            ps::make(Kind::Resident, v.frame, ps::kHasRemote | ps::kAccessed) | (s & ps::kPinMask);
        if (word.compare_exchange_weak(s, keep, std::memory_order_acq_rel)) {
          rt_.writebacks.fetch_add(1, std::memory_order_relaxed);
          rt_.evictor_rescues.fetch_add(1, std::memory_order_relaxed);
          break;
        }
      } else {
        // A transparent page is gone from the region already: a fault waiting
        // for it fetches it again. A clean one that never had a remote copy was
        // never written: it reads as zeros again.
        const bool wrote = s & ps::kDirty;
        // A transparent page keeps the eviction clock, for its fault to see
        // how soon it came back (hw_quick_refaults).
        const std::uint64_t stamp = hw ? ps::evict_stamp(rt_.evictions.load(std::memory_order_relaxed)) : 0;
        const std::uint64_t next = wrote || (s & ps::kHasRemote) ? ps::make(Kind::Remote, stamp, ps::kHasRemote)
                                                                 : ps::make(Kind::Untouched, 0, 0);
        if (!word.compare_exchange_weak(s, next, std::memory_order_acq_rel)) continue;
        release_frame(v.frame);
        (wrote ? rt_.writebacks : rt_.clean_drops).fetch_add(1, std::memory_order_relaxed);
        rt_.evictions.fetch_add(1, std::memory_order_relaxed);
        if (next & ps::kHasRemote) rt_.to_remote.fetch_add(1, std::memory_order_relaxed);
        break;
      }
    }
  }
}

bool Evictor::process_frees() {
  std::vector<FreeReq> work;
  {
    std::lock_guard<std::mutex> g(frees_mu_);
    work.swap(frees_);
    frees_pending_.store(false, std::memory_order_relaxed);
  }
  if (work.empty()) return false;
  drain_pending();  // so no freed page is mid-eviction
  for (const FreeReq& req : work) {
    const std::uint64_t first = req.first, pages = req.pages;
    std::uint64_t busy_since = 0;
    for (unsigned round = 0;; ++round) {
      std::vector<Victim> marked;
      bool busy = false;
      for (std::uint64_t vpn = first; vpn < first + pages; ++vpn) {
        std::atomic<std::uint64_t>& word = rt_.pt[vpn];
        std::uint64_t s = word.load(std::memory_order_acquire);
        switch (ps::kind(s)) {
          case Kind::Untouched:
            break;
          case Kind::Remote:
            if (word.compare_exchange_strong(s, 0, std::memory_order_acq_rel))
              rt_.discarded_remote.fetch_add(1, std::memory_order_relaxed);
            else
              busy = true;
            break;
          case Kind::Resident:
            if (rt_.is_hw_page(vpn)) {  // unmap it now: nothing else can hold it
              std::uint64_t w = s | ps::kWriting;
              w = ps::with_kind(w, Kind::Evicting);
              if (!word.compare_exchange_strong(s, w, std::memory_order_acq_rel)) { busy = true; break; }
              std::uint32_t f = static_cast<std::uint32_t>(ps::frame(s));
              rt_.hw.load()->drop_page(vpn);
              word.store(0, std::memory_order_release);
              release_frame(f);
              break;
            }
            if (ps::pins(s) == 0 &&
                word.compare_exchange_strong(s, ps::with_kind(s, Kind::Evicting), std::memory_order_acq_rel))
              marked.push_back({vpn, static_cast<std::uint32_t>(ps::frame(s))});
            else
              busy = true;
            break;
          case Kind::Evicting:
            marked.push_back({vpn, static_cast<std::uint32_t>(ps::frame(s))});
            break;
          case Kind::Fetching:
            busy = true;
            break;
        }
      }
      if (!marked.empty()) {
        std::uint64_t gen = detail::g_shootdown_gen.fetch_add(1, std::memory_order_seq_cst) + 1;
        rt_.shootdowns.fetch_add(1, std::memory_order_relaxed);
        wait_acked(gen);
        const std::vector<std::uint64_t> hz = collect_hazards();
        for (const Victim& v : marked) {
          std::atomic<std::uint64_t>& word = rt_.pt[v.vpn];
          std::uint64_t s = word.load(std::memory_order_acquire);
          if (ps::kind(s) == Kind::Evicting && ps::frame(s) == v.frame && ps::pins(s) == 0 &&
              !std::binary_search(hz.begin(), hz.end(), v.vpn) &&
              word.compare_exchange_strong(s, 0, std::memory_order_acq_rel)) {
            release_frame(v.frame);
          } else {
            busy = true;
          }
        }
      }
      if (!busy) break;
      // A page of the range is being filled (fault-around may claim pages of a
      // block being freed) or pinned: wait for it. A descheduled fault handler
      // on a loaded machine can take a while, so the limit is time, not rounds.
      if (round == 0) busy_since = detail::now_ns();
      else if (detail::now_ns() - busy_since > 20'000'000'000ull)
        detail::fatal("far memory at page %llu is still in use while being freed; free arrays only "
                      "after every thread is done with them",
                      static_cast<unsigned long long>(first));
      refill_rings();  // a core using the range may be waiting for a frame
      if (round < 1000) detail::cpu_relax();
      else sched_yield();  // let the thread filling it run (two vCPUs are shared)
    }
    rt_.discarded_pages.fetch_add(pages, std::memory_order_relaxed);
    rt_.transport->discard(first * kPageSize, pages * kPageSize);
    if (req.release) {
      if (rt_.is_hw_page(first)) rt_.hw.load()->release_range(first, pages);
      else rt_.far.release(first, pages);
    }
    frees_done_.store(static_cast<std::uint32_t>(req.ticket), std::memory_order_release);
    detail::futex_wake(&frees_done_, INT32_MAX);
  }
  return true;
}

}  // namespace farmem::evict
