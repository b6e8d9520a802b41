// The transparent region (see region.hpp): reservation and set-up, and blocks
// (farmem_malloc, the shim's mmaps, mimalloc's arena). Faults are served in
// fault.cc, pages leave in leaving.cc, the kernel's first touches are taken in
// first_touch.cc, and fork() is handled in fork.cc.
#include "hw/region.hpp"

#include <signal.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "evict/evictor.hpp"
#include "farmem/runtime.hpp"
#include "mem/page_state.hpp"
#include "runtime/runtime.hpp"

namespace farmem::hw {

using mem::Kind;
namespace ps = mem::ps;

namespace {
constexpr std::uint64_t kAlign = 64ull << 20;  // mimalloc arenas want 32 MiB alignment
}  // namespace

Region::Region(detail::Runtime& rt, std::uint64_t bytes) : rt_(rt) {
  detail::InternalAlloc internal;
  bytes_ = (bytes + kAlign - 1) & ~(kAlign - 1);
  if (rt.transport->pins_local_memory())  // a pinned frame cannot move into the region
    throw Error("farmem_malloc (the transparent region) moves frames with UFFDIO_MOVE, but the " +
                rt.transport->describe() + " transport pinned the frame pool (its RDMA device has no "
                "on-demand paging); use far pointers, a device with ODP, or tcp://HOST:PORT");
  const std::uint64_t pages = bytes_ / 4096;
  in_thread_ = rt.cfg.hw_faults == "signal";
  // Dirty tracking saves the write-back of a clean page, which has its remote
  // copy; with exclusive loads (the compressed tier) no fetched page has one.
  track_dirty_ = rt.cfg.hw_dirty == "track" && !rt.exclusive_loads;
  keep_hot_ = rt.cfg.hw_keep_hot;
  fault_around_ = rt.cfg.hw_fault_around;
  // Throws with the fix when userfaultfd is not usable. User-mode-only is
  // enough in SIGBUS mode, whose system calls on missing pages fail anyway.
  uffd_ = open_uffd(in_thread_, in_thread_);
  first_vpn_ = rt.far.alloc(pages);
  if (first_vpn_ == 0) {
    close(uffd_.fd);
    throw Error("far memory cannot hold a transparent region of " + std::to_string(bytes_ >> 20) +
                " MiB; raise FARMEM_FAR_MEM or lower FARMEM_HW_MEM");
  }
  void* p = mmap(nullptr, bytes_ + kAlign, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) {
    close(uffd_.fd);
    throw Error("cannot reserve the transparent region (" + std::to_string(bytes_ >> 20) + " MiB): " +
                std::strerror(errno) + "; lower FARMEM_HW_MEM");
  }
  char* raw = static_cast<char*>(p);
  base_ = reinterpret_cast<char*>((reinterpret_cast<std::uintptr_t>(raw) + kAlign - 1) & ~(kAlign - 1));
  if (base_ > raw) munmap(raw, static_cast<std::size_t>(base_ - raw));
  munmap(base_ + bytes_, static_cast<std::size_t>(raw + kAlign - base_));
  detail::kernel_madvise(base_, bytes_, MADV_NOHUGEPAGE);  // pages come and go one at a time
  lazy_ = rt.cfg.hw_first_touch == "kernel";
  nchunks_ = bytes_ / 4096 / kChunkPages;
  if (lazy_) {  // chunks are registered as the evictor first takes pages from them (watch_next)
    watched_.reset(new std::atomic<std::uint8_t>[nchunks_]);
    for (std::uint64_t c = 0; c < nchunks_; ++c) watched_[c].store(0, std::memory_order_relaxed);
    present_.assign(nchunks_, 0);
  } else {
    register_range(uffd_.fd, base_, bytes_, true);
  }
  // A frame's page may move into the region: the pool must be registered too.
  pool_ = rt.pool;
  pool_bytes_ = std::uint64_t{rt.nframes} * 4096;
  register_range(uffd_.fd, pool_, pool_bytes_);
  pages_.reset(1, pages + 1);
  // One word per eviction group, outside the region; its pages are touched
  // only where groups were used.
  heat_groups_ = pages / kEvictPages + 1;
  heat_ = detail::map_table<std::atomic<std::uint32_t>>(heat_groups_);
  if (heat_ == nullptr) {
    close(uffd_.fd);
    throw Error(std::string("cannot map the transparent region's eviction table: ") + std::strerror(errno) +
                "; lower FARMEM_HW_MEM");
  }
  staging_ = static_cast<char*>(
      mmap(nullptr, (1 + kAhead) * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  wake_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  rt.hw_first.store(first_vpn_, std::memory_order_relaxed);
  rt.hw_pages.store(pages, std::memory_order_release);
  if (in_thread_) {
    install_sigbus_handler();
  } else {
    start_handler(&Region::handler_loop);
  }
}

std::string Region::fault_path() const {
  return std::string(in_thread_ ? "in the faulting thread (SIGBUS)" : "handler thread") + "; " + uffd_.how +
         "; UFFDIO_MOVE" + (lazy_ ? "; first touch by the kernel" : "");
}

Region::~Region() {
  stop_.store(true);
  std::uint64_t one = 1;
  if (write(wake_fd_, &one, sizeof one) < 0) {
  }
  if (handler_ && handler_->joinable()) handler_->join();
  if (heat_ != nullptr) munmap(heat_, heat_groups_ * sizeof *heat_);
}

void Region::start_handler(void (Region::*loop)()) {
  handler_ = new std::thread([this, loop] { (this->*loop)(); });
  pthread_setname_np(handler_->native_handle(), "farmem-uffd");
}

// ---- blocks ---------------------------------------------------------------

void* Region::alloc(std::uint64_t bytes, std::uint64_t align) {
  detail::InternalAlloc internal;
  std::uint64_t pages = (bytes + 4095) / 4096;
  if (pages == 0) pages = 1;
  const std::uint64_t align_pages = align > 4096 ? align / 4096 : 1;
  std::uint64_t idx = pages_.alloc(pages + align_pages - 1);
  if (idx == 0) return nullptr;
  std::uint64_t start = idx;
  if (align_pages > 1) {  // give back the unaligned head and tail
    start = ((idx - 1 + align_pages - 1) / align_pages) * align_pages + 1;
    if (start > idx) pages_.release(idx, start - idx);
    if (align_pages - 1 > start - idx) pages_.release(start + pages, align_pages - 1 - (start - idx));
  }
  std::lock_guard<std::mutex> g(mu_);
  blocks_[start] = pages;
  if (start + pages > used_end_.load(std::memory_order_relaxed))
    used_end_.store(start + pages, std::memory_order_release);
  return base_ + (start - 1) * 4096;
}

bool Region::free(void* p) {
  if (!contains(p) || (reinterpret_cast<std::uintptr_t>(p) & 4095)) return false;
  std::uint64_t pages;
  {
    std::lock_guard<std::mutex> g(mu_);
    auto it = blocks_.find(index_of(p));
    if (it == blocks_.end()) return false;
    pages = it->second;
  }
  return unmap(p, pages * 4096);
}

std::uint64_t Region::usable_size(void* p) {
  if (!contains(p)) return 0;
  std::lock_guard<std::mutex> g(mu_);
  auto it = blocks_.find(index_of(p));
  return it == blocks_.end() ? 0 : it->second * 4096;
}

bool Region::unmap(void* p, std::uint64_t len) {
  detail::InternalAlloc internal;
  if (!contains(p) || len == 0) return false;
  const std::uint64_t a = index_of(p);
  const std::uint64_t b = std::min(a + (len + 4095) / 4096, bytes_ / 4096 + 1);
  std::vector<std::pair<std::uint64_t, std::uint64_t>> gone;  // (first index, pages)
  {
    std::lock_guard<std::mutex> g(mu_);
    auto it = blocks_.upper_bound(a);
    if (it != blocks_.begin()) --it;
    while (it != blocks_.end() && it->first < b) {
      const std::uint64_t s = it->first, e = s + it->second;
      if (e <= a) {
        ++it;
        continue;
      }
      const std::uint64_t x = std::max(s, a), y = std::min(e, b);
      it = blocks_.erase(it);
      if (s < x) blocks_[s] = x - s;
      if (y < e) it = blocks_.emplace(y, e - y).first;
      gone.emplace_back(x, y - x);
    }
  }
  for (auto [first, n] : gone) drop_pages(first_vpn_ + first - 1, n, true);
  return !gone.empty();
}

bool Region::discard(void* p, std::uint64_t len) {
  detail::InternalAlloc internal;
  if (!contains(p) || len == 0) return false;
  const std::uint64_t first = vpn_of(p);
  const std::uint64_t pages = std::min((len + 4095) / 4096, first_vpn_ + bytes_ / 4096 - first);
  drop_pages(first, pages, false);
  return true;
}

namespace {
// Calls f(index, n, offset) for each piece of [index, index+pages) that lies
// within one 2 MiB chunk (index: 1-based page index; offset: from index).
template <class F>
void each_chunk_piece(std::uint64_t index, std::uint64_t pages, std::uint64_t chunk_pages, F f) {
  for (std::uint64_t i = 0; i < pages;) {
    const std::uint64_t idx = index + i, n = std::min(pages - i, chunk_pages - (idx - 1) % chunk_pages);
    f(idx, n, i);
    i += n;
  }
}
}  // namespace

void* Region::remap(void* old, std::uint64_t old_len, std::uint64_t new_len, int flags) {
  detail::InternalAlloc internal;
  old_len = (old_len + 4095) & ~std::uint64_t{4095};
  new_len = (new_len + 4095) & ~std::uint64_t{4095};
  const std::uint64_t a = index_of(old);
  const std::uint64_t old_pages = old_len / 4096, new_pages = new_len / 4096;
  bool at_end = false;
  {
    std::lock_guard<std::mutex> g(mu_);
    auto it = blocks_.upper_bound(a);
    if (it == blocks_.begin() || new_pages == 0 || old_pages == 0) {
      errno = EINVAL;
      return nullptr;
    }
    --it;
    if (a + old_pages > it->first + it->second) {  // not all inside one block
      errno = EFAULT;
      return nullptr;
    }
    at_end = a + old_pages == it->first + it->second;
    if (new_pages > old_pages && at_end && pages_.take_at(a + old_pages, new_pages - old_pages)) {
      it->second += new_pages - old_pages;  // grown in place: the new pages are untouched
      return old;
    }
  }
  if (new_pages < old_pages) {
    unmap(static_cast<char*>(old) + new_len, old_len - new_len);
    return old;
  }
  if (new_pages == old_pages) return old;
  if (!(flags & MREMAP_MAYMOVE)) {
    errno = ENOMEM;
    return nullptr;
  }
  char* to = static_cast<char*>(alloc(new_len));
  if (to == nullptr) {
    errno = ENOMEM;
    return nullptr;
  }
  // Copy what was ever written; untouched pages stay untouched. In an
  // unwatched chunk the kernel's page tables say which pages hold data; the
  // lock keeps the evictor from watching it meanwhile (once watched, a page
  // it takes away is faulted back by the copy).
  const std::uint64_t from_vpn = vpn_of(old);
  std::vector<unsigned char> has(old_pages, 0);
  {
    std::unique_lock<std::mutex> g(watch_mu_, std::defer_lock);
    if (lazy_) g.lock();
    each_chunk_piece(a, old_pages, kChunkPages, [&](std::uint64_t idx, std::uint64_t n, std::uint64_t i) {
      if (!watched(idx)) present_in(idx, n, &has[i]);
      else
        for (std::uint64_t k = i; k < i + n; ++k)
          has[k] = ps::kind(rt_.pt[from_vpn + k].load(std::memory_order_acquire)) != Kind::Untouched;
    });
  }
  for (std::uint64_t i = 0; i < old_pages; ++i)
    if (has[i]) std::memcpy(to + i * 4096, static_cast<char*>(old) + i * 4096, 4096);
  unmap(old, old_len);
  return to;
}

void Region::drop_pages(std::uint64_t first_vpn, std::uint64_t pages, bool release) {
  if (lazy_ && !rt_.forked_child) {
    // Unwatched chunks: the kernel's pages, no page-table state; drop them here.
    bool all_unwatched = true;
    std::lock_guard<std::mutex> g(watch_mu_);
    each_chunk_piece(first_vpn - first_vpn_ + 1, pages, kChunkPages,
                     [&](std::uint64_t idx, std::uint64_t n, std::uint64_t i) {
                       if (!watched(idx)) detail::kernel_madvise(page_addr(first_vpn + i), n * 4096, MADV_DONTNEED);
                       else all_unwatched = false;
                     });
    if (all_unwatched) {  // nothing for the evictor to do
      if (release) release_range(first_vpn, pages);
      return;
    }
  }
  if (rt_.forked_child) {  // no evictor: this process's pages are local
    detail::kernel_madvise(page_addr(first_vpn), pages * 4096, MADV_DONTNEED);
    for (std::uint64_t v = first_vpn; v < first_vpn + pages; ++v) rt_.pt[v].store(0, std::memory_order_release);
    if (release) release_range(first_vpn, pages);
    return;
  }
  std::uint64_t ticket = rt_.evictor->free_range(first_vpn, pages, release);
  if (!release) rt_.evictor->wait_freed(ticket);  // MADV_DONTNEED: zeros from the next access on
}

void Region::release_range(std::uint64_t first_vpn, std::uint64_t pages) {
  pages_.release(first_vpn - first_vpn_ + 1, pages);
}

}  // namespace farmem::hw
