// The transparent far-memory region: ordinary pointers into a reserved range
// under userfaultfd. Its pages are far pages like any other (same page table,
// same budget, same evictor, same transport). A missing page is brought in by
// the fault-handler thread: the bytes go into a free frame of the pool, then
// UFFDIO_MOVE moves that physical page into the region (no copy, and the
// application's resident memory stays at the budget). Eviction moves it back
// out (one kernel TLB shootdown), writes it back, and frees the frame.
#pragma once
#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "hw/uffd.hpp"
#include "mem/far_alloc.hpp"

namespace farmem::detail {
struct Runtime;
}

namespace farmem::hw {

class Region {
 public:
  Region(detail::Runtime& rt, std::uint64_t bytes);  // throws farmem::Error
  ~Region();

  void* alloc(std::uint64_t bytes);  // page granular, zeroed; nullptr when full
  bool free(void* p);                // false if p is not an allocation of ours
  std::uint64_t usable_size(void* p);
  bool contains(const void* p) const {
    return static_cast<const char*>(p) >= base_ && static_cast<const char*>(p) < base_ + bytes_;
  }
  char* page_addr(std::uint64_t vpn) const { return base_ + (vpn - first_vpn_) * 4096; }
  void release_range(std::uint64_t first_vpn, std::uint64_t pages);  // from the evictor
  const std::string& how() const { return uffd_.how; }

  // Evictor side (single thread).
  int move_out(std::uint64_t vpn, std::uint32_t frame);  // region -> frame; 0 or errno
  int move_in(std::uint64_t vpn, std::uint32_t frame);   // frame -> region; wakes waiters

 private:
  void handler_loop();
  bool resolve(std::uint64_t addr);  // false: retry later

  detail::Runtime& rt_;
  Uffd uffd_;
  char* base_ = nullptr;
  std::uint64_t bytes_ = 0, first_vpn_ = 0;
  mem::FarAllocator pages_;  // page index + 1 within the region
  std::mutex mu_;
  std::map<std::uintptr_t, std::uint64_t> sizes_;  // allocation -> pages
  std::thread handler_;
  std::atomic<bool> stop_{false};
  int stop_fd_ = -1;
};

}  // namespace farmem::hw
