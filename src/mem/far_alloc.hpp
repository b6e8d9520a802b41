// The far address-space allocator: page-granular ranges of far pages, first fit.
// Allocation is rare (arrays, not objects), so a mutex is fine here.
#pragma once
#include <cstdint>
#include <map>
#include <mutex>

namespace farmem::mem {

class FarAllocator {
 public:
  void reset(std::uint64_t first_page, std::uint64_t end_page);
  // Returns the first page of `pages` contiguous far pages, or 0 when exhausted.
  std::uint64_t alloc(std::uint64_t pages);
  void release(std::uint64_t first_page, std::uint64_t pages);
  // Takes [first_page, first_page + pages) if all of it is free (growing a block in place).
  bool take_at(std::uint64_t first_page, std::uint64_t pages);
  // Held across fork() so a child never inherits it locked.
  void lock() { mu_.lock(); }
  void unlock() { mu_.unlock(); }
  std::uint64_t allocated_pages() const;

 private:
  mutable std::mutex mu_;
  std::map<std::uint64_t, std::uint64_t> free_;  // first page -> page count
  std::uint64_t allocated_ = 0;
};

}  // namespace farmem::mem
