// The transparent region (see region.hpp): reservation, blocks (farmem_malloc,
// the shim's mmaps, mimalloc's arena), the userfaultfd fault-handler thread,
// and the region's side of fork().
#include "hw/region.hpp"

#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "evict/evictor.hpp"
#include "farmem/runtime.hpp"
#include "mem/page_state.hpp"
#include "transport/queue_pair.hpp"
#include "runtime/fatal.hpp"
#include "runtime/runtime.hpp"
#include "sched/sched.hpp"

namespace farmem::hw {

using mem::Kind;
namespace ps = mem::ps;

namespace {
constexpr std::uint64_t kAlign = 64ull << 20;  // mimalloc arenas want 32 MiB alignment
alignas(4096) const char kZeroPage[4096] = {};
constexpr unsigned kAhead = 15;            // pages fetched ahead after sequential faults
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
    // No SA_ONSTACK: a uthread's fault runs on its own stack. SA_NODEFER: a
    // uthread may park inside the handler, and the next one on this kernel
    // thread may fault too.
    struct sigaction sa {};
    sa.sa_sigaction = on_sigbus;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    g_signal_region.store(this, std::memory_order_release);
    sigaction(SIGBUS, &sa, &g_prev_sigbus);
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

void Region::release_range(std::uint64_t first_vpn, std::uint64_t pages) {
  pages_.release(first_vpn - first_vpn_ + 1, pages);
}

// ---- page moves (evictor and handler) --------------------------------------

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

void Region::protect(Leaving& l) {
  std::sort(l.vpns.begin(), l.vpns.end());
  l.ranges.clear();
  for (std::uint64_t v : l.vpns) {
    if (!l.ranges.empty() && (v - first_vpn_) / kBlockPages == (l.ranges.back().first - first_vpn_) / kBlockPages &&
        !mapped_between(l.ranges.back().first + l.ranges.back().second, v))
      l.ranges.back().second = v + 1 - l.ranges.back().first;
    else
      l.ranges.emplace_back(v, 1);
  }
  for (auto [first, pages] : l.ranges)
    if (int e = write_protect(uffd_.fd, page_addr(first), pages * 4096, true); e != 0)
      detail::fatal("cannot write-protect pages of the transparent region at %p (UFFDIO_WRITEPROTECT: %s)",
                    static_cast<void*>(page_addr(first)), std::strerror(e));
}

// A page of [from, to) that is here and stays (a group of kEvictPages that is
// not leaving): one range over it would write-protect it, and its next write
// would fault. Pages that are not here cost nothing to cover. The answer may be
// stale by the time of the write-protection; a page filled meanwhile is then
// covered, as a page filled inside a leaving group always was: its next write
// faults once. Only pages that leave need the protection, and they always get it.
bool Region::mapped_between(std::uint64_t from, std::uint64_t to) const {
  for (std::uint64_t v = from; v < to; ++v) {
    const Kind k = ps::kind(rt_.pt[v].load(std::memory_order_relaxed));
    if (k == Kind::Resident || k == Kind::Fetching) return true;
  }
  return false;
}

void Region::unmap_written(const Leaving& l) {
  std::vector<iovec> iov;
  iov.reserve(l.vpns.size());
  for (std::uint64_t v : l.vpns) {
    char* a = page_addr(v);
    if (!iov.empty() && static_cast<char*>(iov.back().iov_base) + iov.back().iov_len == a) iov.back().iov_len += 4096;
    else iov.push_back({a, 4096});
  }
  if (self_pidfd_ < 0) self_pidfd_ = static_cast<int>(syscall(SYS_pidfd_open, getpid(), 0));
  for (std::size_t k = 0; k < iov.size();) {
    const std::size_t n = std::min<std::size_t>(iov.size() - k, 1024);  // IOV_MAX
    long done = self_pidfd_ < 0 ? -1 : syscall(SYS_process_madvise, self_pidfd_, iov.data() + k, n, MADV_DONTNEED, 0);
    // No process_madvise (before Linux 5.10) or no pidfd: one range a call. It
    // may also stop early on an error: the ranges it did not reach go one a call,
    // because a page left mapped here would be used while the page table says far.
    std::size_t i = k;
    for (; done > 0 && i < k + n; ++i) {
      if (static_cast<std::size_t>(done) < iov[i].iov_len) break;
      done -= static_cast<long>(iov[i].iov_len);
    }
    for (; i < k + n; ++i) detail::kernel_madvise(iov[i].iov_base, iov[i].iov_len, MADV_DONTNEED);
    k += n;
  }
  // Wake the writers that blocked on the protection: their pages are gone, so
  // they fault again and fetch them. The protection is not lifted: a page of the
  // range that is here (filled meanwhile) may be clean and must stay protected,
  // or its next write would go unnoticed; one that was written has its next
  // write fault, and the fault path lifts the protection from it.
  for (auto [first, pages] : l.ranges) wake(uffd_.fd, page_addr(first), pages * 4096);
}

void Region::drop_page(std::uint64_t vpn) { detail::kernel_madvise(page_addr(vpn), 4096, MADV_DONTNEED); }

// After faults at a steady stride (1: sequential): claims the pages that
// follow vpn at that stride (remote or never touched, each with a free frame
// whose pool slot is empty), to come in with it: one batched fetch, and one
// UFFDIO_COPY per run of consecutive pages. Stops at the first page that
// cannot be claimed.
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
          if (c.hw_stride_run >= 1 && c.hw_stride >= -kMaxStride && c.hw_stride <= kMaxStride &&
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

// ---- fork -----------------------------------------------------------------

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
