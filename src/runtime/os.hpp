// Thin wrappers over the kernel calls every subsystem uses: the monotonic
// clock, futex wait/wake on a 32-bit atomic word, and madvise straight to the
// kernel (the preload shim interposes madvise() to serve the region's pages;
// the runtime itself must never go through it), and error text and number
// parsing that read no locale.
#pragma once
#include <linux/futex.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstring>

namespace farmem::detail {

// n zeroed T's in address space reserved, not committed (MAP_NORESERVE): a
// per-far-page table that costs memory only where pages were touched. Null if
// the mapping fails; the caller names what it was for.
template <class T>
T* map_table(std::uint64_t n) {
  void* p = mmap(nullptr, n * sizeof(T), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  return p == MAP_FAILED ? nullptr : static_cast<T*>(p);
}

inline std::uint64_t now_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<std::uint64_t>(ts.tv_nsec);
}

// Sleeps while *w == expected, at most timeout_ns (negative: no limit).
inline void futex_wait(std::atomic<std::uint32_t>* w, std::uint32_t expected, long timeout_ns = -1) {
  timespec ts{timeout_ns / 1000000000L, timeout_ns % 1000000000L};
  syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(w), FUTEX_WAIT_PRIVATE, expected,
          timeout_ns < 0 ? nullptr : &ts, nullptr, 0);
}

inline int kernel_madvise(void* addr, std::uint64_t len, int advice) {
  return static_cast<int>(syscall(SYS_madvise, addr, len, advice));
}

inline void futex_wake(std::atomic<std::uint32_t>* w, int waiters = 1) {
  syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(w), FUTEX_WAKE_PRIVATE, waiters, nullptr, nullptr, 0);
}

// errno's text without translation. strerror() reads the program's locale,
// which under the preload shim lives in the far region: a runtime thread that
// serves the region's faults would fault on it and wait for itself.
inline const char* errno_text(int e) {
  const char* t = strerrordesc_np(e);
  return t ? t : "unknown error";
}

// The first n space-separated decimal fields of a /proc line (statm,
// schedstat) into out, zero where missing. By hand: strtoull reads the
// program's locale, which under the shim lives in the far region.
inline void parse_u64_fields(const char* buf, std::size_t len, std::uint64_t* out, unsigned n) {
  for (unsigned i = 0; i < n; ++i) out[i] = 0;
  for (std::size_t i = 0, f = 0; i < len && f < n; ++i) {
    if (buf[i] >= '0' && buf[i] <= '9') out[f] = out[f] * 10 + static_cast<std::uint64_t>(buf[i] - '0');
    else if (buf[i] == ' ') ++f;
  }
}

}  // namespace farmem::detail
