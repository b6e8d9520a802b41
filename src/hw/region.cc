// The transparent region (see region.hpp): reservation, allocation, and the
// userfaultfd fault-handler thread.
#include "hw/region.hpp"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "evict/evictor.hpp"
#include "farmem/runtime.hpp"
#include "mem/page_state.hpp"
#include "runtime/fatal.hpp"
#include "runtime/runtime.hpp"

namespace farmem::hw {

using mem::Kind;
namespace ps = mem::ps;

Region::Region(detail::Runtime& rt, std::uint64_t bytes) : rt_(rt) {
  bytes_ = (bytes + 4095) & ~std::uint64_t{4095};
  if (rt.transport->pins_local_memory())  // a pinned frame cannot move into the region
    throw Error("farmem_malloc (the transparent region) moves frames with UFFDIO_MOVE, but the " +
                rt.transport->describe() + " transport pinned the frame pool (its RDMA device has no "
                "on-demand paging); use far pointers, a device with ODP, or tcp://HOST:PORT");
  const std::uint64_t pages = bytes_ / 4096;
  uffd_ = open_uffd();  // throws with the fix when userfaultfd is not usable
  first_vpn_ = rt.far.alloc(pages);
  if (first_vpn_ == 0) {
    close(uffd_.fd);
    throw Error("far memory cannot hold a transparent region of " + std::to_string(bytes_ >> 20) +
                " MiB; raise FARMEM_FAR_MEM or lower FARMEM_HW_MEM");
  }
  void* p = mmap(nullptr, bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) {
    close(uffd_.fd);
    throw Error("cannot reserve the transparent region (" + std::to_string(bytes_ >> 20) + " MiB): " +
                std::strerror(errno) + "; lower FARMEM_HW_MEM");
  }
  base_ = static_cast<char*>(p);
  madvise(base_, bytes_, MADV_NOHUGEPAGE);  // pages come and go one at a time
  register_range(uffd_.fd, base_, bytes_);
  // Frames move into the region and back: the pool must be a MOVE destination too.
  register_range(uffd_.fd, rt.pool, std::uint64_t{rt.nframes} * 4096);
  pages_.reset(1, pages + 1);
  stop_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  rt.hw_first.store(first_vpn_, std::memory_order_relaxed);
  rt.hw_pages.store(pages, std::memory_order_release);
  handler_ = std::thread([this] { handler_loop(); });
  pthread_setname_np(handler_.native_handle(), "farmem-uffd");
}

Region::~Region() {
  stop_.store(true);
  std::uint64_t one = 1;
  if (write(stop_fd_, &one, sizeof one) < 0) {
  }
  if (handler_.joinable()) handler_.join();
}

void* Region::alloc(std::uint64_t bytes) {
  std::uint64_t pages = (bytes + 4095) / 4096;
  if (pages == 0) pages = 1;
  std::uint64_t idx = pages_.alloc(pages);
  if (idx == 0) return nullptr;
  char* p = base_ + (idx - 1) * 4096;
  std::lock_guard<std::mutex> g(mu_);
  sizes_[reinterpret_cast<std::uintptr_t>(p)] = pages;
  return p;
}

bool Region::free(void* p) {
  std::uint64_t pages;
  {
    std::lock_guard<std::mutex> g(mu_);
    auto it = sizes_.find(reinterpret_cast<std::uintptr_t>(p));
    if (it == sizes_.end()) return false;
    pages = it->second;
    sizes_.erase(it);
  }
  std::uint64_t first = first_vpn_ + (static_cast<char*>(p) - base_) / 4096;
  rt_.evictor->free_range(first, pages);  // drops the pages, then release_range()
  return true;
}

std::uint64_t Region::usable_size(void* p) {
  std::lock_guard<std::mutex> g(mu_);
  auto it = sizes_.find(reinterpret_cast<std::uintptr_t>(p));
  return it == sizes_.end() ? 0 : it->second * 4096;
}

void Region::release_range(std::uint64_t first_vpn, std::uint64_t pages) {
  pages_.release(first_vpn - first_vpn_ + 1, pages);
}

int Region::move_out(std::uint64_t vpn, std::uint32_t frame) {
  return move_page(uffd_.fd, rt_.frame_addr(frame), page_addr(vpn));
}

int Region::move_in(std::uint64_t vpn, std::uint32_t frame) {
  return move_page(uffd_.fd, page_addr(vpn), rt_.frame_addr(frame));
}

// One fault: give page `addr` its bytes, or say it must wait (being written back).
bool Region::resolve(std::uint64_t addr) {
  detail::Core& c = detail::this_core();
  const std::uint64_t vpn = first_vpn_ + (addr - reinterpret_cast<std::uint64_t>(base_)) / 4096;
  char* page = page_addr(vpn);
  std::atomic<std::uint64_t>& word = rt_.pt[vpn];
  for (;;) {
    std::uint64_t s = word.load(std::memory_order_acquire);
    switch (ps::kind(s)) {
      case Kind::Resident:  // another fault on the same page got it in already
        wake(uffd_.fd, page, 4096);
        return true;
      case Kind::Evicting:
        if ((s & ps::kWriting) && !(s & ps::kWanted))
          word.compare_exchange_weak(s, s | ps::kWanted, std::memory_order_acq_rel);
        return false;  // the evictor moves it back in when the write-back is done
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
        // Pages of the region are always written back when evicted (no dirty
        // tracking yet), so they are marked dirty.
        std::uint64_t flags = ps::kAccessed | ps::kDirty;
        if (ps::kind(s) == Kind::Untouched) {
          std::memset(rt_.frame_addr(f), 0, 4096);
          c.stats.bump(c.stats.zero_fills);
        } else {
          detail::fetch_page(rt_, c, vpn, f);
          flags |= ps::kHasRemote;
        }
        rt_.owner[f].store(vpn, std::memory_order_relaxed);
        if (int e = move_in(vpn, f); e != 0)
          detail::fatal("cannot map a page into the transparent region (UFFDIO_MOVE: %s)", std::strerror(e));
        word.store(ps::make(Kind::Resident, f, flags), std::memory_order_release);
        c.stats.bump(c.stats.faults);
        detail::record_fault(c, t0);
        return true;
      }
    }
  }
}

void Region::handler_loop() {
  std::vector<std::uint64_t> retry;
  uffd_msg msgs[64];
  while (!stop_.load(std::memory_order_relaxed)) {
    pollfd p[2] = {{uffd_.fd, POLLIN, 0}, {stop_fd_, POLLIN, 0}};
    int n = poll(p, 2, retry.empty() ? 100 : 0);
    if (n < 0 && errno != EINTR) break;
    std::vector<std::uint64_t> again;
    for (std::uint64_t a : retry)
      if (!resolve(a)) again.push_back(a);
    retry.swap(again);
    if (n <= 0 || !(p[0].revents & POLLIN)) {
      if (!retry.empty()) detail::ack_point(detail::this_core());
      continue;
    }
    ssize_t got = read(uffd_.fd, msgs, sizeof msgs);
    if (got <= 0) continue;
    for (ssize_t i = 0; i < got / static_cast<ssize_t>(sizeof(uffd_msg)); ++i) {
      if (msgs[i].event != UFFD_EVENT_PAGEFAULT) continue;
      std::uint64_t a = msgs[i].arg.pagefault.address & ~std::uint64_t{4095};
      if (!contains(reinterpret_cast<void*>(a)))
        detail::fatal("access to an empty frame-pool slot at 0x%llx (runtime bug)",
                      static_cast<unsigned long long>(a));
      if (!resolve(a)) retry.push_back(a);
    }
  }
}

}  // namespace farmem::hw
