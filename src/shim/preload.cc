// libfarmem-preload.so: far memory for unmodified programs (LD_PRELOAD; see
// apps/farmem-run). It starts the runtime from the environment and puts the
// program's heap in the transparent region:
//   - the malloc family is served by mimalloc, one heap per thread, all in one
//     exclusive mimalloc arena carved out of the region;
//   - large anonymous private mmaps (FARMEM_SHIM_MMAP_MIN, default 256 KiB)
//     become region blocks, with munmap, mremap and madvise(MADV_DONTNEED /
//     MADV_FREE) on them behaving as the kernel would.
// Everything else goes to the kernel or to ordinary memory: allocations made
// before the runtime is up, by the runtime itself (runtime threads must never
// fault on the region they serve), and by mimalloc for its own bookkeeping.
#include <errno.h>
#include <mimalloc.h>
#include <stdarg.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include "farmem/runtime.hpp"
#include "hw/region.hpp"
#include "runtime/fatal.hpp"
#include "runtime/runtime.hpp"

#define FARMEM_EXPORT extern "C" __attribute__((visibility("default")))
#define FARMEM_TLS __attribute__((tls_model("initial-exec")))

namespace {

using farmem::detail::g_internal_alloc;

enum : int { kBoot = 0, kReady = 1, kOff = 2 };
std::atomic<int> g_state{kBoot};
farmem::hw::Region* g_region = nullptr;
mi_arena_id_t g_arena{};
std::uint64_t g_arena_bytes = 0;
std::uint64_t g_mmap_min = 256 << 10;

__thread mi_heap_t* tl_heap FARMEM_TLS = nullptr;
__thread int tl_in_mimalloc FARMEM_TLS = 0;  // mimalloc's own mmaps go to the kernel
__thread bool tl_dying FARMEM_TLS = false;   // thread teardown: ordinary memory from here

struct InMimalloc {
  InMimalloc() { ++tl_in_mimalloc; }
  ~InMimalloc() { --tl_in_mimalloc; }
};

// Clears the thread's heap before mimalloc deletes it at thread exit (C++
// thread_local destructors run before pthread key destructors).
struct HeapGuard {
  volatile int armed = 0;
  ~HeapGuard() {
    tl_dying = true;
    tl_heap = nullptr;
  }
};
thread_local HeapGuard tl_guard;

mi_heap_t* make_heap() {
  InMimalloc in;
  mi_heap_t* h = mi_heap_new_in_arena(g_arena);
  if (h == nullptr) return nullptr;
  tl_guard.armed = 1;  // registers the guard (its allocation is ordinary memory: tl_in_mimalloc)
  tl_heap = h;
  return h;
}

// The heap serving this thread, or nullptr for ordinary memory.
inline mi_heap_t* heap() {
  if (g_internal_alloc || tl_in_mimalloc || g_state.load(std::memory_order_relaxed) != kReady) return nullptr;
  if (mi_heap_t* h = tl_heap) return h;
  if (tl_dying) return nullptr;
  return make_heap();
}

inline bool in_region(const void* p) { return g_region != nullptr && g_region->contains(p); }

long raw(long nr, long a, long b, long c, long d, long e, long f) { return syscall(nr, a, b, c, d, e, f); }
void* kernel_mmap(void* addr, size_t len, int prot, int flags, int fd, off_t off) {
  return reinterpret_cast<void*>(raw(SYS_mmap, reinterpret_cast<long>(addr), static_cast<long>(len), prot, flags,
                                     fd, static_cast<long>(off)));
}

std::uint64_t env_size(const char* name, std::uint64_t dflt) {
  const char* v = getenv(name);
  if (v == nullptr || *v == 0) return dflt;
  try {
    return farmem::parse_size(v, name);
  } catch (const farmem::Error& e) {
    farmem::detail::fatal("%s", e.what());
  }
}

// Starts the runtime and the region and hands mimalloc its arena. Any failure
// ends the program with one line: it asked for far memory and cannot have it.
__attribute__((constructor(101))) void start() {
  if (getenv("FARMEM_SHIM_DISABLE")) {
    g_state.store(kOff);
    return;
  }
  farmem::detail::InternalAlloc internal;
  farmem::Config cfg;
  try {
    cfg = farmem::Config::from_env();
    // Faults go to the handler thread: in SIGBUS mode a system call on a far
    // page fails with EFAULT, and mimalloc's own faults would run the handler
    // inside mimalloc. farmem-run refuses FARMEM_HW_FAULTS=signal.
    cfg.hw_faults = "thread";
    cfg.populate_pool = false;  // frames fill as they are used: small programs stay small
    cfg.lazy_connect = true;  // no server or session for a process that never sends a page far
    cfg.keep_running_at_exit = true;  // stdio and libc free region memory after atexit handlers
    farmem::init(cfg);
  } catch (const farmem::Error& e) {
    farmem::detail::fatal("%s", e.what());
  }
  g_mmap_min = env_size("FARMEM_SHIM_MMAP_MIN", 256 << 10);
  g_region = farmem::hw::shared_region();
  if (g_region == nullptr) _exit(1);  // shared_region printed why
  // Half the region is mimalloc's arena, the rest serves large mmaps.
  const std::uint64_t arena_bytes = (farmem::detail::current().cfg.hw_mem_bytes / 2) & ~((64ull << 20) - 1);
  void* arena = g_region->alloc(arena_bytes, 64ull << 20);
  InMimalloc in;
  // Region memory never goes back to the kernel behind the runtime's back.
  mi_option_disable(mi_option_allow_decommit);
  mi_option_set(mi_option_page_reset, 0);
  mi_option_set(mi_option_abandoned_page_decommit, 0);
  g_arena_bytes = arena_bytes;
  if (arena == nullptr || !mi_manage_os_memory_ex(arena, arena_bytes, true, false, true, -1, true, &g_arena))
    farmem::detail::fatal("mimalloc refused an arena of %llu MiB in the transparent region; raise FARMEM_HW_MEM",
                          static_cast<unsigned long long>(arena_bytes >> 20));
  g_state.store(kReady, std::memory_order_release);
}

}  // namespace

// ---- the malloc family -------------------------------------------------------

namespace {
std::atomic<bool> g_told_full{false};

// The arena ran out: ENOMEM, and once per process a line saying why and what
// to raise (the program's own out-of-memory message would not name farmem).
// A request larger than the whole arena (a program probing its limits) is
// refused quietly.
void* out_of_heap(size_t n) {
  errno = ENOMEM;
  if (n < g_arena_bytes && !g_told_full.exchange(true)) {
    char line[200];
    int len = snprintf(line, sizeof line,
                       "farmem: the far heap is full (%llu MiB, half of FARMEM_HW_MEM): malloc of %zu bytes "
                       "failed; raise FARMEM_HW_MEM\n",
                       static_cast<unsigned long long>(g_arena_bytes >> 20), n);
    if (len > 0) (void)!write(2, line, static_cast<size_t>(len) < sizeof line ? static_cast<size_t>(len) : sizeof line - 1);
  }
  return nullptr;
}
}  // namespace

FARMEM_EXPORT void* malloc(size_t n) {
  if (mi_heap_t* h = heap()) {
    void* p = mi_heap_malloc(h, n);
    return p != nullptr ? p : out_of_heap(n);
  }
  InMimalloc in;
  return mi_malloc(n);
}

FARMEM_EXPORT void free(void* p) {
  if (p == nullptr) return;
  InMimalloc in;
  mi_free(p);  // any mimalloc block: the arena's or ordinary memory's
}

FARMEM_EXPORT void cfree(void* p) { free(p); }

FARMEM_EXPORT void* calloc(size_t count, size_t size) {
  if (mi_heap_t* h = heap()) {
    void* p = mi_heap_calloc(h, count, size);
    size_t n;
    return p != nullptr || __builtin_mul_overflow(count, size, &n) ? p : out_of_heap(n);
  }
  InMimalloc in;
  return mi_calloc(count, size);
}

FARMEM_EXPORT void* realloc(void* p, size_t n) {
  if (mi_heap_t* h = heap()) {
    void* q = mi_heap_realloc(h, p, n);
    return q != nullptr || n == 0 ? q : out_of_heap(n);
  }
  InMimalloc in;
  return mi_realloc(p, n);
}

FARMEM_EXPORT void* reallocarray(void* p, size_t count, size_t size) {
  size_t n;
  if (__builtin_mul_overflow(count, size, &n)) {
    errno = ENOMEM;
    return nullptr;
  }
  return realloc(p, n);
}

FARMEM_EXPORT void* aligned_alloc(size_t align, size_t n) {
  if (align == 0 || (align & (align - 1)) != 0) {
    errno = EINVAL;
    return nullptr;
  }
  if (mi_heap_t* h = heap()) {
    void* p = mi_heap_malloc_aligned(h, n, align);
    return p != nullptr ? p : out_of_heap(n);
  }
  InMimalloc in;
  return mi_malloc_aligned(n, align);
}

FARMEM_EXPORT void* memalign(size_t align, size_t n) { return aligned_alloc(align, n); }

FARMEM_EXPORT int posix_memalign(void** out, size_t align, size_t n) {
  if (align < sizeof(void*) || (align & (align - 1)) != 0) return EINVAL;
  void* p = aligned_alloc(align, n);
  if (p == nullptr) return ENOMEM;
  *out = p;
  return 0;
}

FARMEM_EXPORT void* valloc(size_t n) { return aligned_alloc(4096, n); }

FARMEM_EXPORT void* pvalloc(size_t n) { return aligned_alloc(4096, (n + 4095) & ~size_t{4095}); }

FARMEM_EXPORT size_t malloc_usable_size(void* p) {
  if (p == nullptr) return 0;
  InMimalloc in;
  return mi_usable_size(p);
}

FARMEM_EXPORT int malloc_trim(size_t) { return 0; }

// ---- anonymous mappings --------------------------------------------------------

// With _FILE_OFFSET_BITS=64 glibc's header renames mmap to mmap64; both names
// are exported explicitly (off_t is 64 bits on every 64-bit target).
FARMEM_EXPORT void* shim_mmap(void* addr, size_t len, int prot, int flags, int fd, off_t off) __asm__("mmap");
FARMEM_EXPORT void* shim_mmap64(void* addr, size_t len, int prot, int flags, int fd, off_t off) __asm__("mmap64");

void* shim_mmap(void* addr, size_t len, int prot, int flags, int fd, off_t off) {
  constexpr int kOurs = MAP_PRIVATE | MAP_ANONYMOUS;
  constexpr int kNotOurs = MAP_FIXED | MAP_FIXED_NOREPLACE | MAP_SHARED | MAP_STACK | MAP_GROWSDOWN | MAP_HUGETLB;
  if ((flags & kOurs) == kOurs && !(flags & kNotOurs) && prot == (PROT_READ | PROT_WRITE) && len >= g_mmap_min &&
      !g_internal_alloc && !tl_in_mimalloc && g_state.load(std::memory_order_acquire) == kReady) {
    (void)addr;  // a hint only
    (void)off;
    if (void* p = g_region->alloc(len)) return p;
    // The region is full: ordinary memory, as the kernel would give.
  }
  (void)fd;
  return kernel_mmap(addr, len, prot, flags, fd, off);
}

void* shim_mmap64(void* addr, size_t len, int prot, int flags, int fd, off_t off) {
  return shim_mmap(addr, len, prot, flags, fd, off);
}

FARMEM_EXPORT int munmap(void* addr, size_t len) {
  if (in_region(addr)) {
    if (reinterpret_cast<std::uintptr_t>(addr) & 4095) {
      errno = EINVAL;
      return -1;
    }
    g_region->unmap(addr, len);  // pages of our blocks in the range go; the rest stays reserved
    return 0;
  }
  return static_cast<int>(raw(SYS_munmap, reinterpret_cast<long>(addr), static_cast<long>(len), 0, 0, 0, 0));
}

FARMEM_EXPORT void* mremap(void* old, size_t old_len, size_t new_len, int flags, ...) {
  void* new_addr = nullptr;
  if (flags & MREMAP_FIXED) {
    va_list ap;
    va_start(ap, flags);
    new_addr = va_arg(ap, void*);
    va_end(ap);
  }
  if (in_region(old)) {
    if ((flags & ~MREMAP_MAYMOVE) != 0 || (reinterpret_cast<std::uintptr_t>(old) & 4095)) {
      errno = EINVAL;  // MREMAP_FIXED / DONTUNMAP on far memory: not supported
      return MAP_FAILED;
    }
    void* p = g_region->remap(old, old_len, new_len, flags);
    return p ? p : MAP_FAILED;
  }
  return reinterpret_cast<void*>(raw(SYS_mremap, reinterpret_cast<long>(old), static_cast<long>(old_len),
                                     static_cast<long>(new_len), flags, reinterpret_cast<long>(new_addr), 0));
}

FARMEM_EXPORT int madvise(void* addr, size_t len, int advice) {
  if (in_region(addr)) {
    if (advice == MADV_DONTNEED || advice == MADV_FREE || advice == MADV_REMOVE)
      g_region->discard(addr, len);  // zeros from the next access, as the kernel gives
    return 0;                        // other advice is a hint; far pages ignore it
  }
  return static_cast<int>(
      raw(SYS_madvise, reinterpret_cast<long>(addr), static_cast<long>(len), advice, 0, 0, 0));
}
