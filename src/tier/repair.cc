// Restoring redundancy: after a server is lost (or retires from the pool
// file), every page with a piece there is read, decoded, and its missing
// pieces written to up servers that hold none of its pieces.
#include <sched.h>
#include <time.h>

#include <algorithm>

#include "runtime/os.hpp"
#include "runtime/runtime.hpp"
#include "tier/pool_impl.hpp"

namespace farmem::tier::impl {

// Claims `page` for a repair if a piece is on a server that is not up (or is
// missing) and an up server can take it; fatal if fewer than K readable pieces are left.
bool Pool::claim_for_repair(std::uint64_t page, bool* stuck) {
  std::uint64_t w = loc[page].load(std::memory_order_acquire);
  if (w == 0 || (w & kBusy)) return false;  // never written, or being written (to up servers)
  const std::uint32_t up = up_mask(), readable = readable_mask();
  unsigned on_up = 0, on_readable = 0;
  for (unsigned piece = 0; piece < scheme.pieces(); ++piece) {
    const unsigned s = piece_server(w, piece);
    on_up += s != 0 && (up & (1u << (s - 1)));
    on_readable += s != 0 && (readable & (1u << (s - 1)));
  }
  if (on_readable < scheme.k) pages_lost(page, w);
  if (on_up == scheme.pieces()) return false;
  // A page written while fewer servers were up waits for more.
  if (static_cast<unsigned>(__builtin_popcount(up)) <= on_up) return *stuck = true, false;
  return loc[page].compare_exchange_strong(w, w | kBusy, std::memory_order_acq_rel);
}

// Up to kRepairBatch pages at a time are read and written, one round trip each
// way a batch, and no faster than FARMEM_REPAIR_RATE: the program keeps most of
// the servers' bandwidth while redundancy comes back.
void Pool::repair_loop() {
  farmem::detail::g_internal_alloc = 1;  // under the shim: never allocate from the region
  constexpr unsigned kRepairBatch = 64;
  PoolQueuePair qp(*this);
  IoBuffer bufs(kRepairBatch * kPage);
  std::vector<std::uint64_t> batch;
  // The rate limit: a batch of n pages that began at `started` may end no
  // earlier than n pages' worth of time after it, or after the previous
  // batch's end, whichever is later (time spent idle earns no credit).
  const std::uint64_t ns_per_page = cfg_.repair_rate ? kPage * 1'000'000'000ull / cfg_.repair_rate : 0;
  std::uint64_t next_ns = 0;
  auto pace = [&](std::size_t n, std::uint64_t started) {
    if (!ns_per_page) return;
    next_ns = std::max(next_ns, started) + n * ns_per_page;
    for (std::uint64_t t; (t = farmem::detail::now_ns()) < next_ns;) {
      {
        std::lock_guard<std::mutex> g(mu_);
        if (stop_) return;
      }
      timespec ts{0, static_cast<long>(std::min<std::uint64_t>(next_ns - t, 10'000'000))};
      nanosleep(&ts, nullptr);
    }
  };
  auto drain = [&](std::size_t n) {
    net::Completion c[kRepairBatch];
    for (std::size_t got = 0; got < n;) {
      const std::size_t k = qp.poll(c, kRepairBatch);
      if (k == 0) qp.wait(1000);
      got += k;
    }
  };
  auto flush = [&] {
    const std::uint64_t started = farmem::detail::now_ns();
    for (std::size_t i = 0; i < batch.size(); ++i) qp.post_read(batch[i] * kPage, &bufs[i * kPage], kPage, i);
    qp.submit();
    drain(batch.size());
    for (std::size_t i = 0; i < batch.size(); ++i)
      qp.post_repair(batch[i], loc[batch[i]].load(std::memory_order_acquire) & ~kBusy, &bufs[i * kPage], i);
    qp.submit();
    drain(batch.size());  // each write stores its page's new location word, releasing it
    repaired_pages.fetch_add(batch.size(), std::memory_order_relaxed);
    pace(batch.size(), started);
    batch.clear();
  };
  for (;;) {
    std::uint64_t seq;
    {
      std::unique_lock<std::mutex> g(mu_);
      cv_.wait(g, [&] { return stop_ || repair_wanted_ > 0; });
      if (stop_) return;
      repair_wanted_ = 0;
      repair_running_ = true;
      seq = failures_;
    }
    const std::uint64_t t0 = farmem::detail::now_ns();
    const std::uint64_t end = high_page_.load();
    bool stuck = false;
    for (std::uint64_t p = 0; p < end; ++p) {
      if ((p & 4095) == 0) {
        std::lock_guard<std::mutex> g(mu_);
        if (stop_) break;
      }
      if (claim_for_repair(p, &stuck)) batch.push_back(p);
      if (batch.size() == kRepairBatch) flush();
    }
    if (!batch.empty()) flush();
    bool restored;
    {
      std::lock_guard<std::mutex> g(mu_);
      repair_running_ = false;
      restored = restored_ = !stuck && repair_wanted_ == 0;
      last_repair_ms_ = (farmem::detail::now_ns() - t0) / 1000000;
      repair_ns_ += farmem::detail::now_ns() - t0;
      if (stop_) return;
    }
    after_repair_scan(restored, seq);
  }
}

}  // namespace farmem::tier::impl
