// Far pointers, deref scopes and the far array: the software-paged front end.
//
//   farmem::FarArray<std::uint64_t> a(n);      // lives in far memory
//   { farmem::Scope s;                          // pins what it dereferences
//     a.mut(s, i) += 1;                         // T& valid until the scope ends
//     std::uint64_t v = a.get(s, j); }
//
// A deref is a lookup in the calling core's software TLB; a miss walks the
// page table and, if the page is remote, fetches it through the core's queue pair.
#pragma once
#include <farmem/detail/core.hpp>
#include <farmem/runtime.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <utility>

namespace farmem {

// A far address: (far page number << 12) | offset. 0 is the null far pointer.
template <class T>
struct FarPtr {
  std::uint64_t addr = 0;
  explicit operator bool() const { return addr != 0; }
  FarPtr operator+(std::ptrdiff_t n) const { return {addr + n * sizeof(T)}; }
};

// A deref scope. Pointers and references obtained through it stay valid (the
// pages are pinned) until it ends. Scopes nest; keep them short around blocking
// calls: an open scope delays the eviction of the pages it touched.
class Scope {
 public:
  Scope() : c_(&detail::this_core()) {
    if (c_->depth++ == 0) detail::scope_enter(*c_);
  }
  ~Scope() {
    if (--c_->depth == 0) detail::scope_exit(*c_);
  }
  Scope(const Scope&) = delete;
  Scope& operator=(const Scope&) = delete;

  // Read-only access: the page is not marked dirty.
  const void* read(std::uint64_t addr) {
    detail::TlbEntry& e = c_->tlb[(addr >> detail::kPageShift) & (detail::kTlbEntries - 1)];
    if (e.vpn == (addr >> detail::kPageShift) && e.scope == c_->scope_serial) [[likely]]
      return e.frame + (addr & detail::kPageMask);
    return detail::deref_slow(*c_, addr, false);
  }
  // Read-write access: the page is marked dirty (written back on eviction).
  void* write(std::uint64_t addr) {
    detail::TlbEntry& e = c_->tlb[(addr >> detail::kPageShift) & (detail::kTlbEntries - 1)];
    if (e.vpn == (addr >> detail::kPageShift) && e.scope == c_->scope_serial && e.writable)
        [[likely]]
      return e.frame + (addr & detail::kPageMask);
    return detail::deref_slow(*c_, addr, true);
  }
  template <class T>
  const T& read(FarPtr<T> p) { return *static_cast<const T*>(read(p.addr)); }
  template <class T>
  T& write(FarPtr<T> p) { return *static_cast<T*>(write(p.addr)); }

 private:
  detail::Core* c_;
};

// Raw far allocation (page granular). Thread-safe. Throws farmem::Error when far
// memory is exhausted.
std::uint64_t far_alloc(std::size_t bytes);
void far_free(std::uint64_t addr, std::size_t bytes);

// Copies n bytes between local memory and far memory at addr, one page at a
// time, each in its own scope (a long copy pins one page at a time, not all).
inline void copy_from_far(void* dst, std::uint64_t addr, std::size_t n) {
  auto* out = static_cast<char*>(dst);
  while (n > 0) {
    const std::size_t k = std::min<std::size_t>(n, detail::kPageSize - (addr & detail::kPageMask));
    { Scope s; __builtin_memcpy(out, s.read(addr), k); }
    out += k, addr += k, n -= k;
  }
}
inline void copy_to_far(std::uint64_t addr, const void* src, std::size_t n) {
  const auto* in = static_cast<const char*>(src);
  while (n > 0) {
    const std::size_t k = std::min<std::size_t>(n, detail::kPageSize - (addr & detail::kPageMask));
    { Scope s; __builtin_memcpy(s.write(addr), in, k); }
    in += k, addr += k, n -= k;
  }
}

// An array of trivially copyable T in far memory, zero-initialised. Elements never
// straddle a page: each page holds kPerPage elements.
template <class T>
class FarArray {
  static_assert(std::is_trivially_copyable_v<T>, "far memory holds trivially copyable types");
  static_assert(sizeof(T) <= detail::kPageSize, "an element must fit in a page");

 public:
  static constexpr std::size_t kPerPage = detail::kPageSize / sizeof(T);

  FarArray() = default;
  explicit FarArray(std::size_t n)
      : n_(n), bytes_(((n + kPerPage - 1) / kPerPage) * detail::kPageSize),
        base_(n ? far_alloc(bytes_) : 0) {}
  ~FarArray() { reset(); }
  FarArray(FarArray&& o) noexcept { swap(o); }
  FarArray& operator=(FarArray&& o) noexcept {
    if (this != &o) { reset(); swap(o); }
    return *this;
  }
  FarArray(const FarArray&) = delete;
  FarArray& operator=(const FarArray&) = delete;

  std::size_t size() const { return n_; }
  std::size_t bytes() const { return bytes_; }
  FarPtr<T> ptr(std::size_t i) const {
    return {base_ + (i / kPerPage) * detail::kPageSize + (i % kPerPage) * sizeof(T)};
  }
  const T& get(Scope& s, std::size_t i) const { return s.read(ptr(i)); }
  T& mut(Scope& s, std::size_t i) { return s.write(ptr(i)); }

  // Convenience accessors that open their own scope.
  T load(std::size_t i) const { Scope s; return s.read(ptr(i)); }
  void store(std::size_t i, const T& v) { Scope s; s.write(ptr(i)) = v; }

 private:
  void reset() {
    if (base_) far_free(base_, bytes_);
    base_ = 0; n_ = 0; bytes_ = 0;
  }
  void swap(FarArray& o) noexcept {
    std::swap(n_, o.n_); std::swap(bytes_, o.bytes_); std::swap(base_, o.base_);
  }
  std::size_t n_ = 0;
  std::size_t bytes_ = 0;
  std::uint64_t base_ = 0;
};

}  // namespace farmem
