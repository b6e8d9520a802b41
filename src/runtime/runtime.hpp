// The runtime singleton: what every subsystem shares (page table, frame pool,
// cores, transport, evictor). Internal.
#pragma once
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>

#include "farmem/detail/core.hpp"
#include "farmem/runtime.hpp"
#include "mem/far_alloc.hpp"
#include "transport/queue_pair.hpp"
#include "runtime/os.hpp"
#include "runtime/thread_times.hpp"

namespace farmem::evict {
class Evictor;
}
namespace farmem::hw {
class Region;
}
namespace farmem::live {
class Publisher;
struct Snapshot;
}
namespace farmem::metrics {
class Server;
}

namespace farmem::detail {

struct Runtime {
  Config cfg;
  Runtime() = default;
  // Only a runtime that failed to start is destroyed (init() gives its memory
  // back and may be called again); a running one lives until the process exits.
  ~Runtime();
  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;

  // Page table: one state word per far page (mem/page_state.hpp). Far page n
  // lives in remote slot n of the memory server.
  std::atomic<std::uint64_t>* pt = nullptr;
  std::uint64_t far_pages = 0;

  // Frame pool: frames 1..nframes (0 means "no frame").
  char* pool = nullptr;                        // address of frame 1
  std::uint32_t nframes = 0;
  std::atomic<std::uint64_t>* owner = nullptr; // frame -> far page number, 0 = free
  char* frame_addr(std::uint64_t f) const { return pool + (f - 1) * kPageSize; }
  // Whether frame f's pool slot holds a page. A slot is empty until first used
  // (when the pool is not populated at start) and while its page has been moved
  // into the transparent region. The uffd handler never touches an empty slot.
  std::atomic<std::uint8_t>* slot_full = nullptr;
  void mark_slot_full(std::uint64_t f) { slot_full[f].store(1, std::memory_order_relaxed); }

  // Set in a child after fork(): no evictor runs; transparent pages are served
  // locally from a snapshot of far memory (hw/fork.cc).
  bool forked_child = false;
  bool fork_snapshot = false;  // the transport kept far memory readable for the child

  Core* cores = nullptr;                       // kMaxCores slots
  std::atomic<std::uint32_t> core_hwm{0};      // slots in use are below this

  std::unique_ptr<net::Transport> transport;
  // The transport frees a page's stored copy when it reads it (the compressed
  // tier): a fetched page has no remote copy, so it is installed dirty.
  bool exclusive_loads = false;
  mem::FarAllocator far;
  std::unique_ptr<evict::Evictor> evictor;
  // Live statistics (runtime/live_stats.hpp): the evictor refreshes the page; null when off.
  std::unique_ptr<live::Publisher> live;
  std::unique_ptr<metrics::Server> metrics;  // FARMEM_METRICS
  std::uint64_t started_ns = 0;

  // The transparent (userfaultfd) region, created on the first farmem_malloc.
  std::atomic<hw::Region*> hw{nullptr};
  std::atomic<std::uint64_t> hw_first{0}, hw_pages{0};  // its far pages (set once)
  bool is_hw_page(std::uint64_t vpn) const {
    return vpn - hw_first.load(std::memory_order_relaxed) < hw_pages.load(std::memory_order_relaxed);
  }

  // Evictor-side statistics (the evictor is the only writer).
  // Transparent pages evicted and where the evictor's time went (ns, summed).
  std::atomic<std::uint64_t> hw_evicted{0}, hw_protect_ns{0}, hw_writeback_ns{0}, hw_unmap_ns{0};
  // FARMEM_HW_FIRST_TOUCH=kernel: chunks watched, kernel-filled pages they
  // held, mincore scans and their time (evictor only writes these).
  std::atomic<std::uint64_t> hw_chunks_watched{0}, hw_kernel_pages{0}, hw_scans{0}, hw_scan_ns{0};
  std::atomic<std::uint64_t> hw_reserved_max{0};  // most frames ever held back for kernel-filled pages
  std::atomic<std::uint64_t> evictions{0}, writebacks{0}, clean_drops{0}, shootdowns{0},
      discarded_pages{0}, evictor_rescues{0}, to_remote{0}, discarded_remote{0};
  // Frames the evictor has freed, ever: a core waiting for a frame knows the
  // evictor still makes progress (frames go to other cores first, in turn).
  std::atomic<std::uint64_t> frames_released{0};
  // Full turns of the evictor's CLOCK hand: the time unit of the transparent
  // region's group protection (hw::Region::group_protected).
  std::atomic<std::uint32_t> clock_revolutions{0};
  std::atomic<std::uint64_t> hw_hot_passes{0};  // frames passed over for a protected group

  // CPU and wait times of the evictor and of the transparent region's fault
  // handler, for FARMEM_STATS (runtime/thread_times.hpp).
  ThreadClock evictor_clock, handler_clock;

  // Evictor wake-up: cores kick when their free ring runs low.
  std::atomic<std::uint32_t> evictor_sleeping{0};
  std::atomic<std::uint32_t> kick_word{0};
  void kick_evictor();

  std::uint64_t page_table_bytes() const { return far_pages * sizeof(std::uint64_t); }
};

extern std::atomic<Runtime*> g_runtime_ptr;

// Non-zero while a thread runs runtime code (always, on the runtime's own
// threads). The preload shim then serves malloc from ordinary memory, never
// from the transparent region: a runtime thread that faulted on the region
// could wait for itself.
extern __thread int g_internal_alloc __attribute__((tls_model("initial-exec")));
struct InternalAlloc {
  InternalAlloc() { ++g_internal_alloc; }
  ~InternalAlloc() { --g_internal_alloc; }
  InternalAlloc(const InternalAlloc&) = delete;
  InternalAlloc& operator=(const InternalAlloc&) = delete;
};
// The running runtime; only valid once a core is registered or init() returned.
inline Runtime& current() { return *g_runtime_ptr.load(std::memory_order_acquire); }
Runtime& runtime();  // starts the runtime from the environment on first use

inline void cpu_relax() { __builtin_ia32_pause(); }

// Fault-path building blocks (fault/fault.cc), shared with the transparent region.
std::uint32_t take_frame(Runtime& rt, Core& c);            // waits for the evictor if needed
void fetch_page(Runtime& rt, Core& c, std::uint64_t vpn, std::uint32_t f);
void fetch_to(Core& c, std::uint64_t vpn, void* dst);
// Fetches n far pages into dsts as one batch and waits (plain threads only).
void fetch_batch(Core& c, const std::uint64_t* vpns, char* const* dsts, unsigned n);
// A free frame only if the core's ring holds more than half (prefetch never waits).
std::uint32_t try_take_frame(Core& c);
void record_fault(Core& c, std::uint64_t t0);

// Fills a live-statistics snapshot: the counters of farmem::stats() and the
// fault-latency histogram; with_info also the settings and transports (allocates).
void collect_live(Runtime& rt, live::Snapshot& s, bool with_info);

// A point where a core that is blocked inside a scope acknowledges shootdowns:
// its TLB is flushed, its hazards keep protecting the pages it holds.
void ack_point(Core& c);

// Fault-latency histogram bucket (log-linear: 8 sub-buckets per power of two).
inline unsigned hist_bucket(std::uint64_t ns) {
  if (ns < 8) return static_cast<unsigned>(ns);
  unsigned msb = 63 - static_cast<unsigned>(__builtin_clzll(ns));
  return msb * 8 + static_cast<unsigned>((ns >> (msb - 3)) & 7);
}
inline std::uint64_t hist_value(unsigned b) {
  if (b < 8) return b;
  unsigned msb = b / 8;
  return (std::uint64_t{8} | (b & 7)) << (msb - 3);
}

}  // namespace farmem::detail
