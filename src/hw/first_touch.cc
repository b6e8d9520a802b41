// FARMEM_HW_FIRST_TOUCH=kernel: the region is registered with userfaultfd a
// 2 MiB chunk at a time, when the evictor first needs pages from it; until then
// the kernel fills its pages. Counting them, and taking them (docs/design.md).
#include "hw/region.hpp"

#include <sys/mman.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "mem/page_state.hpp"
#include "runtime/fatal.hpp"
#include "runtime/runtime.hpp"

namespace farmem::hw {

using mem::Kind;
namespace ps = mem::ps;

std::uint64_t Region::used_chunks() const {
  const std::uint64_t end = used_end_.load(std::memory_order_acquire);  // 1-based, exclusive
  return std::min(nchunks_, (end + kChunkPages - 2) / kChunkPages);
}

void Region::present_in(std::uint64_t index, std::uint64_t pages, unsigned char* out) {
  if (mincore(base_ + (index - 1) * 4096, pages * 4096, out) != 0)
    detail::fatal("mincore on the transparent region failed: %s", std::strerror(errno));
  for (std::uint64_t i = 0; i < pages; ++i) out[i] &= 1;
}

std::uint64_t Region::scan_unwatched() {
  const std::uint64_t t0 = detail::now_ns();
  const std::uint64_t chunks = used_chunks();
  std::uint64_t total = 0;
  for (std::uint64_t c = 0; c < chunks;) {
    if (watched_[c].load(std::memory_order_acquire)) {
      present_[c] = 0;
      ++c;
      continue;
    }
    std::uint64_t e = c + 1;  // one mincore over a run of unwatched chunks
    while (e < chunks && e - c < 512 && !watched_[e].load(std::memory_order_acquire)) ++e;
    mincore_buf_.resize((e - c) * kChunkPages);
    present_in(c * kChunkPages + 1, (e - c) * kChunkPages, mincore_buf_.data());
    for (std::uint64_t k = c; k < e; ++k) {
      unsigned n = 0;
      const unsigned char* v = mincore_buf_.data() + (k - c) * kChunkPages;
      for (std::uint64_t i = 0; i < kChunkPages; ++i) n += v[i];
      present_[k] = static_cast<std::uint16_t>(n);
      total += n;
    }
    c = e;
  }
  rt_.hw_scans.fetch_add(1, std::memory_order_relaxed);
  rt_.hw_scan_ns.fetch_add(detail::now_ns() - t0, std::memory_order_relaxed);
  return total;
}

void Region::watch_chunks(std::uint64_t c, std::uint64_t n, std::vector<std::uint64_t>& vpns) {
  // From the registration on, a missing page of these chunks faults to us; the
  // ones present now are the kernel's, and leave through the evictor's
  // write-back path. A page the handler fills between the two steps is
  // tracked already: its CAS fails.
  char* at = base_ + c * kChunkPages * 4096;
  try {
    register_range(uffd_.fd, at, n * kChunkPages * 4096, true);
  } catch (const Error& e) {
    detail::fatal("%s", e.what());
  }
  for (std::uint64_t k = c; k < c + n; ++k) {
    watched_[k].store(1, std::memory_order_release);
    present_[k] = 0;
  }
  // Nothing was ever handed out past used_end_: nothing is present there.
  const std::uint64_t end_chunk = std::min(c + n, used_chunks());
  if (end_chunk <= c) return;
  mincore_buf_.resize((end_chunk - c) * kChunkPages);
  present_in(c * kChunkPages + 1, (end_chunk - c) * kChunkPages, mincore_buf_.data());
  const std::uint64_t vpn0 = first_vpn_ + c * kChunkPages;
  const std::size_t before = vpns.size();
  for (std::uint64_t i = 0; i < (end_chunk - c) * kChunkPages; ++i) {
    if (!mincore_buf_[i]) continue;
    std::uint64_t s = rt_.pt[vpn0 + i].load(std::memory_order_acquire);
    if (ps::kind(s) == Kind::Untouched &&
        rt_.pt[vpn0 + i].compare_exchange_strong(s, ps::make(Kind::Evicting, 0, ps::kDirty | ps::kAccessed),
                                                std::memory_order_acq_rel))
      vpns.push_back(vpn0 + i);
  }
  rt_.hw_chunks_watched.fetch_add(n, std::memory_order_relaxed);
  rt_.hw_kernel_pages.fetch_add(vpns.size() - before, std::memory_order_relaxed);
}

std::size_t Region::watch_next(std::vector<std::uint64_t>& vpns) {
  const std::uint64_t chunks = used_chunks();
  for (std::uint64_t k = 0; k < chunks; ++k) {
    const std::uint64_t c = (watch_cursor_ + k) % chunks;
    if (present_[c] == 0 || watched_[c].load(std::memory_order_relaxed)) continue;
    watch_cursor_ = c + 1;
    const std::size_t before = vpns.size();
    std::lock_guard<std::mutex> g(watch_mu_);
    watch_chunks(c, 1, vpns);
    return vpns.size() - before;
  }
  return 0;
}

std::size_t Region::throttle(std::vector<std::uint64_t>& vpns) {
  std::uint64_t from = 0;  // the highest chunk holding kernel pages at the last scan
  for (std::uint64_t c = nchunks_; c-- > 0;)
    if (present_[c] != 0) {
      from = c;
      break;
    }
  const std::size_t before = vpns.size();
  std::lock_guard<std::mutex> g(watch_mu_);
  for (std::uint64_t c = from; c < nchunks_;) {
    if (watched_[c].load(std::memory_order_relaxed)) {
      ++c;
      continue;
    }
    std::uint64_t e = c + 1;
    while (e < nchunks_ && e - c < 512 && !watched_[e].load(std::memory_order_relaxed)) ++e;
    watch_chunks(c, e - c, vpns);
    c = e;
  }
  throttled_.store(true, std::memory_order_relaxed);
  return vpns.size() - before;
}

}  // namespace farmem::hw
