// The transparent far-memory region: ordinary pointers into a reserved range
// under userfaultfd. Its pages are far pages like any other (same page table,
// same budget, same evictor, same transport). A missing page is brought in
// either by the faulting thread itself, in a SIGBUS handler
// (FARMEM_HW_FAULTS=signal, UFFD_FEATURE_SIGBUS), or by the fault-handler
// thread (the default): the bytes go into a free frame, then UFFDIO_MOVE moves
// that physical page into the region (or UFFDIO_COPY copies them from a staging
// buffer when the frame's pool slot is empty), so the application's resident
// memory stays at the budget. After faults at a steady stride (sequential or
// not) the pages that follow at that stride come in with the faulting one (one
// transfer, one UFFDIO_COPY per run of consecutive pages).
// The evictor takes transparent pages a group of 64 at a time, write-protects
// them, writes them back straight from the region, and unmaps them together
// (process_madvise): a few kernel TLB shootdowns a batch, not one a page. A
// group whose pages come back soon after they left is passed over for a while
// (FARMEM_HW_KEEP_HOT): the only sign of a hot page the runtime gets.
//
// It hands out page-granular blocks: farmem_malloc's, the preload shim's
// anonymous mmaps (with munmap, mremap and MADV_DONTNEED on any part of them),
// and one aligned arena that the shim gives to mimalloc.
#pragma once
#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "hw/uffd.hpp"
#include "mem/far_alloc.hpp"
#include "runtime/parking.hpp"

namespace farmem::detail {
struct Runtime;
struct Core;
}
namespace farmem::net {
class QueuePair;
}

namespace farmem::hw {

class Region {
 public:
  Region(detail::Runtime& rt, std::uint64_t bytes);  // throws farmem::Error
  ~Region();

  // Blocks: page granular, zeroed; nullptr when the region is full.
  void* alloc(std::uint64_t bytes, std::uint64_t align = 4096);
  bool free(void* p);  // a whole block from alloc(); false if p starts none
  std::uint64_t usable_size(void* p);
  // munmap() semantics on [p, p+len): every page of a block in it is dropped
  // and its address space reused. Returns false if no page of it was ours.
  bool unmap(void* p, std::uint64_t len);
  // MADV_DONTNEED semantics: the pages read as zeros from now on.
  bool discard(void* p, std::uint64_t len);
  // mremap() semantics for a block or its head (flags: MREMAP_MAYMOVE); returns
  // the new address, or nullptr with errno set.
  void* remap(void* old, std::uint64_t old_len, std::uint64_t new_len, int flags);

  // A fault at addr is this region's to serve (the region, or the frame pool it moves pages with).
  bool serves(std::uint64_t addr) const { return contains(reinterpret_cast<const void*>(addr)) || in_pool(addr); }
  bool contains(const void* p) const {
    return static_cast<const char*>(p) >= base_ && static_cast<const char*>(p) < base_ + bytes_;
  }
  char* page_addr(std::uint64_t vpn) const { return base_ + (vpn - first_vpn_) * 4096; }
  std::uint64_t vpn_of(const void* p) const {
    return first_vpn_ + static_cast<std::uint64_t>(static_cast<const char*>(p) - base_) / 4096;
  }
  // Index of p's page in the block bookkeeping (pages_, blocks_): 1-based.
  std::uint64_t index_of(const void* p) const { return vpn_of(p) - first_vpn_ + 1; }
  void release_range(std::uint64_t first_vpn, std::uint64_t pages);  // from the evictor
  // Which fault path serves the region, for statistics and start-up lines.
  std::string fault_path() const;
  bool in_thread() const { return in_thread_; }
  // SIGBUS mode: serve a fault of this thread on page `addr` (region or frame pool).
  void fault_in_thread(std::uint64_t addr, bool write);

  // Evictor side (single thread). Pages leaving the region are written back
  // straight from it: protect() write-protects them (one range per run of them
  // within a 2 MiB block that no staying page interrupts: one kernel TLB
  // shootdown each), so a write racing the
  // write-back waits; unmap_written() then drops them all with one
  // process_madvise and wakes those writers: they fault again on the missing
  // page and fetch it.
  struct Leaving {
    std::vector<std::uint64_t> vpns;                              // sorted by protect()
    std::vector<std::pair<std::uint64_t, std::uint64_t>> ranges;  // (first vpn, pages) protected
  };
  void protect(Leaving& l);
  // A transparent victim takes the resident pages of its group of kEvictPages
  // (256 KiB) with it. The application's loads and stores never reach us, so a
  // group is taken whole, hot pages included; 2 MiB groups (512 pages) took
  // 70% of gcc's evictions as neighbours of a page CLOCK chose, and 57% of its
  // faults were on pages back within an eighth of a budget's worth of
  // evictions. 64 pages took 38% of its faults away (docs/benchmarks.md).
  static constexpr std::uint64_t kEvictPages = 64;
  void unmap_written(const Leaving& l);
  // Groups that came back soon after they left (a hw_quick_refault) are passed
  // over by CLOCK for 1, 2, 4, then 8 more of its revolutions, doubling each
  // time the group comes back quickly once its protection ran out; a group
  // that comes back late starts again at 1 (FARMEM_HW_KEEP_HOT). The runtime
  // never sees the program's loads and stores, so coming back that soon is its
  // only sign of a hot page. A whole group stays or leaves, so the
  // write-protect ranges stay whole (protecting single pages split them, and
  // cost more than it saved). `revolution`: Runtime::clock_revolutions.
  bool group_protected(std::uint64_t vpn, std::uint32_t revolution) const {
    const std::uint32_t w = heat_[(vpn - first_vpn_) / kEvictPages].load(std::memory_order_relaxed);
    const std::uint32_t left = ((w & kHeatUntilMask) - (revolution & kHeatUntilMask)) & kHeatUntilMask;
    return left != 0 && left <= (1u << kHeatMaxLevel) + 1;
  }
  void drop_page(std::uint64_t vpn);  // a freed page leaves the region

  // First touches by the kernel (FARMEM_HW_FIRST_TOUCH=kernel). A 2 MiB chunk
  // starts unwatched: not registered with userfaultfd, so the kernel fills its
  // pages on first touch, and none of them is tracked in the page table (they
  // read Untouched there). The evictor counts them (scan_unwatched) against the
  // budget, and when it needs room it watches the oldest chunk that holds any
  // (watch_next): registers it, and marks its present pages Evicting, frameless,
  // for the usual write-back path. A watched chunk stays watched.
  bool lazy() const { return lazy_; }
  std::uint64_t scan_unwatched();  // pages present in unwatched chunks, by mincore
  std::size_t watch_next(std::vector<std::uint64_t>& vpns);  // appends the marked pages
  // The program fills memory faster than the evictor takes it: watch every
  // chunk from the highest one holding kernel pages on, so new memory faults
  // to us (and waits for frames) from now on, as with FARMEM_HW_FIRST_TOUCH=runtime.
  std::size_t throttle(std::vector<std::uint64_t>& vpns);
  bool throttled() const { return throttled_.load(std::memory_order_relaxed); }

  // fork(): the handler thread parks and block bookkeeping is locked while the
  // process is copied. In the child, a new userfaultfd and handler serve the
  // region from the memory server's snapshot, locally, with no eviction.
  void fork_prepare();
  void fork_parent();
  void fork_child();

 private:
  static constexpr unsigned kAhead = 15;  // pages fetched ahead after sequential faults
  alignas(4096) static constexpr char kZeroPage[4096] = {};
  void install_sigbus_handler();  // SIGBUS mode (fault.cc)
  void handler_loop();
  void park_if_asked();
  bool in_pool(std::uint64_t addr) const {
    const auto pool = reinterpret_cast<std::uint64_t>(pool_);
    return addr >= pool && addr < pool + pool_bytes_;
  }
  void child_loop();
  void serve_child_faults(std::size_t max);
  void serve_until_child_handler_up();
  // staging: 1 + kAhead pages (or 1: no fault-around) for frames whose slot is empty.
  // write: the access was a write (a page read in goes in write-protected when tracking).
  bool resolve(std::uint64_t addr, bool write, char* staging, unsigned staging_pages);  // false: retry later
  void fill_by_copy(detail::Core& c, const std::uint64_t* vpns, const std::uint32_t* frames,
                    const std::uint64_t* flags, unsigned n, char* staging);
  unsigned claim_ahead(detail::Core& c, std::uint64_t vpn, std::int64_t stride, std::uint64_t* ahead,
                       std::uint32_t* frames, std::uint64_t* flags, unsigned max);
  void resolve_in_child(std::uint64_t addr);
  void serve_pool_fault(std::uint64_t addr);
  void fill_from_frame(std::uint64_t vpn, std::uint32_t frame);  // move, or copy + empty slot
  static constexpr std::uint64_t kBlockPages = 512;  // write-protect ranges stay within one 2 MiB block
  bool mapped_between(std::uint64_t from, std::uint64_t to) const;  // a page of [from, to) is here or coming
  void drop_pages(std::uint64_t first_vpn, std::uint64_t pages, bool release);
  static constexpr std::uint64_t kChunkPages = 512;  // the unit of watching (2 MiB)
  bool watched(std::uint64_t index) const {  // index: 1-based page index, as blocks_
    return !lazy_ || watched_[(index - 1) / kChunkPages].load(std::memory_order_acquire);
  }
  std::uint64_t used_chunks() const;  // chunks up to the last page ever handed out
  // Pages of [index, index+pages) that hold data (mincore: 1 or 0 each).
  void present_in(std::uint64_t index, std::uint64_t pages, unsigned char* out);
  // Registers chunks [c, c+n) (all unwatched) and marks the pages present in
  // them Evicting, frameless, appending them to vpns. Caller holds watch_mu_.
  void watch_chunks(std::uint64_t c, std::uint64_t n, std::vector<std::uint64_t>& vpns);
  void start_handler(void (Region::*loop)());
  void note_refault(std::uint64_t vpn, bool quick);  // fault path: a Remote page came back

  // Per group of kEvictPages: bits 0-27 the CLOCK revolution its protection
  // lasts until (exclusive), bits 28-31 its level. Written by the fault paths,
  // read by the evictor; a lost update only shortens or lengthens a protection.
  static constexpr std::uint32_t kHeatUntilMask = (1u << 28) - 1;
  static constexpr unsigned kHeatMaxLevel = 4;
  std::atomic<std::uint32_t>* heat_ = nullptr;
  std::uint64_t heat_groups_ = 0;

  detail::Runtime& rt_;
  Uffd uffd_;
  char* base_ = nullptr;
  std::uint64_t bytes_ = 0, first_vpn_ = 0;
  char* pool_ = nullptr;  // the runtime's frame pool (also registered: pages move to and from it)
  std::uint64_t pool_bytes_ = 0;
  mem::FarAllocator pages_;  // page index + 1 within the region
  std::mutex mu_;
  std::map<std::uint64_t, std::uint64_t> blocks_;  // first page index -> pages (live blocks)
  std::thread* handler_ = nullptr;
  std::atomic<bool> stop_{false};
  detail::Parking parking_;  // fork(): the handler thread parks between faults
  int wake_fd_ = -1;   // eventfd: stop or pause the handler
  int self_pidfd_ = -1;  // process_madvise on ourselves (evictor only)
  char* staging_ = nullptr;  // the handler's page buffers for frames whose slot is empty
  bool in_thread_ = false;   // SIGBUS mode: faults are served by the faulting thread
  bool track_dirty_ = false;  // pages go in write-protected until written (FARMEM_HW_DIRTY=track)
  bool keep_hot_ = true;      // groups that come back quickly are kept longer (FARMEM_HW_KEEP_HOT)
  bool fault_around_ = true;  // a steady stride brings the next pages in (FARMEM_HW_FAULT_AROUND)
  std::unique_ptr<net::QueuePair> child_qp_;
  // Forked child: the handler thread says it reached its loop; the forking
  // thread, which served the faults of its start-up, says it stopped.
  std::atomic<std::uint32_t> child_handler_up_{0}, child_serving_done_{0};
  bool lazy_ = false;                                  // FARMEM_HW_FIRST_TOUCH=kernel
  std::unique_ptr<std::atomic<std::uint8_t>[]> watched_;  // per chunk: registered with userfaultfd
  std::uint64_t nchunks_ = 0;
  std::atomic<std::uint64_t> used_end_{0};  // one past the highest page index ever handed out
  std::mutex watch_mu_;  // watching a chunk vs dropping or copying its unwatched pages
  std::vector<std::uint16_t> present_;  // evictor: pages present per unwatched chunk, last scan
  std::vector<unsigned char> mincore_buf_;  // evictor
  std::uint64_t watch_cursor_ = 0;          // evictor: next chunk watch_next() looks at
  std::atomic<bool> throttled_{false};
};

// The process's region, created on first use (from the runtime's configuration);
// nullptr, after one "farmem: ..." line on stderr, if it cannot be set up.
Region* shared_region();

}  // namespace farmem::hw
