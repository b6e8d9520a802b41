// First-fit allocator of far page ranges with coalescing on release.
#include "mem/far_alloc.hpp"

namespace farmem::mem {

void FarAllocator::reset(std::uint64_t first_page, std::uint64_t end_page) {
  std::lock_guard<std::mutex> g(mu_);
  free_.clear();
  if (end_page > first_page) free_[first_page] = end_page - first_page;
  allocated_ = 0;
}

std::uint64_t FarAllocator::alloc(std::uint64_t pages) {
  std::lock_guard<std::mutex> g(mu_);
  for (auto it = free_.begin(); it != free_.end(); ++it) {
    if (it->second < pages) continue;
    std::uint64_t first = it->first, left = it->second - pages;
    free_.erase(it);
    if (left) free_[first + pages] = left;
    allocated_ += pages;
    return first;
  }
  return 0;
}

void FarAllocator::release(std::uint64_t first, std::uint64_t pages) {
  std::lock_guard<std::mutex> g(mu_);
  allocated_ -= pages;
  auto next = free_.lower_bound(first);
  if (next != free_.end() && first + pages == next->first) {
    pages += next->second;
    next = free_.erase(next);
  }
  if (next != free_.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second == first) {
      prev->second += pages;
      return;
    }
  }
  free_[first] = pages;
}

std::uint64_t FarAllocator::allocated_pages() const {
  std::lock_guard<std::mutex> g(mu_);
  return allocated_;
}

}  // namespace farmem::mem
