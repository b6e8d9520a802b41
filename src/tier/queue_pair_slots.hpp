// What a layer of the far tier that wraps a queue pair (tier/compressed.cc,
// tier/protected.cc) keeps per queue pair: page-sized scratch buffers, reused,
// and the slots that name its operations to the queue pair below (a slot's
// number is the inner cookie). One thread only, like the queue pair.
#pragma once
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "runtime/fatal.hpp"

namespace farmem::tier {

class PageBuffers {
 public:
  explicit PageBuffers(const char* owner) : owner_(owner) {}
  PageBuffers(const PageBuffers&) = delete;
  PageBuffers& operator=(const PageBuffers&) = delete;
  ~PageBuffers() {
    for (char* b : all_) std::free(b);
  }
  char* take() {
    if (!spare_.empty()) {
      char* b = spare_.back();
      spare_.pop_back();
      return b;
    }
    char* b = static_cast<char*>(std::aligned_alloc(4096, 4096));
    if (!b) detail::fatal("out of memory for the %s's buffers", owner_);
    all_.push_back(b);
    return b;
  }
  void give(char* b) { spare_.push_back(b); }

 private:
  const char* owner_;
  std::vector<char*> all_, spare_;
};

template <class Op>
class OpSlots {
 public:
  std::uint32_t take(const Op& op) {
    if (free_.empty()) {
      ops_.push_back(op);
      return static_cast<std::uint32_t>(ops_.size() - 1);
    }
    const std::uint32_t s = free_.back();
    free_.pop_back();
    ops_[s] = op;
    return s;
  }
  Op& operator[](std::uint32_t s) { return ops_[s]; }
  void free(std::uint32_t s) { free_.push_back(s); }
  bool idle() const { return ops_.size() == free_.size(); }  // nothing in flight below

 private:
  std::vector<Op> ops_;
  std::vector<std::uint32_t> free_;
};

}  // namespace farmem::tier
