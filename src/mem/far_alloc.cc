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

bool FarAllocator::take_at(std::uint64_t first, std::uint64_t pages) {
  std::lock_guard<std::mutex> g(mu_);
  auto it = free_.upper_bound(first);
  if (it == free_.begin()) return false;
  --it;
  const std::uint64_t start = it->first, count = it->second;
  if (first + pages > start + count) return false;
  free_.erase(it);
  if (first > start) free_[start] = first - start;
  if (start + count > first + pages) free_[first + pages] = start + count - (first + pages);
  allocated_ += pages;
  return true;
}

std::uint64_t FarAllocator::allocated_pages() const {
  std::lock_guard<std::mutex> g(mu_);
  return allocated_;
}

}  // namespace farmem::mem
