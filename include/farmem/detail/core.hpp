// Per-core state shared between the inline deref hot path (far.hpp) and the
// runtime: the software TLB, the scope depth, the shootdown acknowledgement
// word and the hazard list the evictor reads. Not a public API.
#pragma once
#include <atomic>
#include <cstddef>
#include <cstdint>

namespace farmem::detail {

inline constexpr unsigned kPageShift = 12;
inline constexpr std::size_t kPageSize = std::size_t{1} << kPageShift;
inline constexpr std::uint64_t kPageMask = kPageSize - 1;
inline constexpr unsigned kTlbEntries = 512;  // direct mapped, power of two
inline constexpr unsigned kMaxHazards = 64;   // pages pinned by plain stores per scope
inline constexpr unsigned kMaxCores = 64;
inline constexpr unsigned kRingSize = 64;      // per-core free-frame ring (power of two)
inline constexpr std::uint64_t kOffline = std::uint64_t{1} << 63;

struct TlbEntry {
  std::uint64_t vpn;      // far page number; 0 never matches (page 0 is reserved)
  char* frame;            // local frame holding the page
  std::uint32_t scope;    // scope serial in which the page was published as a hazard
  std::uint32_t writable; // dirty bit already set in the page table
};

struct CoreStats {
  // Written only by the owning core (load+store, no locked op), read by the reporter.
  std::atomic<std::uint64_t> faults{0}, zero_fills{0}, fetches{0}, rescues{0},
      alloc_stalls{0}, fetch_wait_ns{0}, tlb_flushes{0}, prefetches{0};
  // Transparent faults: how many filled, and where their time went (ns, summed).
  std::atomic<std::uint64_t> hw_fills{0}, hw_fault_ns{0}, hw_fetch_ns{0}, hw_copy_ns{0};
  std::atomic<std::uint64_t> hw_dirtied{0};  // first writes to clean transparent pages (a fault each)
  std::atomic<std::uint64_t> hw_quick_refaults{0};  // faults on pages that left within a budget's worth of evictions
  static constexpr unsigned kHistBuckets = 64 * 8;
  std::atomic<std::uint32_t> fault_hist[kHistBuckets]{};  // log-linear, ns
  void bump(std::atomic<std::uint64_t>& c, std::uint64_t n = 1) {
    c.store(c.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
  }
};

// Single-producer (evictor) single-consumer (core) ring of free frame numbers.
struct FreeRing {
  alignas(64) std::atomic<std::uint32_t> head{0};  // consumer position
  alignas(64) std::atomic<std::uint32_t> tail{0};  // producer position
  std::uint32_t slots[kRingSize];
};

class QueuePairBase;

struct alignas(64) Core {
  // Owned by the core's thread; the hot path reads these.
  TlbEntry tlb[kTlbEntries];
  std::uint32_t scope_serial = 1;
  std::uint32_t depth = 0;
  std::uint64_t seen_gen = 0;          // last shootdown generation this core flushed for
  std::uint32_t spare_frame = 0;       // a frame taken but not used (lost a race); 0 = none
  std::uint64_t last_fetch_vpn = 0;    // sequential-fetch detection (prefetch)
  std::uint32_t seq_run = 0;
  char* hw_staging = nullptr;          // transparent faults served by this thread (SIGBUS mode)
  std::uint64_t hw_last_vpn = 0;       // transparent faults: stride detection (fault-around)
  std::int64_t hw_stride = 0;
  std::uint32_t hw_stride_run = 0;
  unsigned index = 0;
  void* qp = nullptr;                  // the core's queue pair (net::QueuePair)
  std::uint32_t npins = 0;             // overflow pins held in this scope
  void* pins = nullptr;                // their pages (std::vector<uint64_t>*)

  // Read by the evictor. Separate lines: the core writes them, the evictor polls them.
  alignas(64) std::atomic<std::uint64_t> ack{kOffline};  // generation acked | kOffline
  alignas(64) std::atomic<std::uint32_t> nhazards{0};
  std::atomic<std::uint64_t> hazards[kMaxHazards];
  // Slot life: 0 free, 1 in use by a thread, 2 thread gone (evictor reclaims the ring).
  alignas(64) std::atomic<std::uint32_t> life{0};
  FreeRing ring;
  CoreStats stats;
};

// Global shootdown generation; the evictor bumps it once per batch.
extern std::atomic<std::uint64_t> g_shootdown_gen;

Core& register_core();                       // first use on a thread
char* deref_slow(Core& c, std::uint64_t addr, bool write);
void flush_tlb(Core& c);
void release_pins(Core& c);

inline thread_local Core* tls_core = nullptr;

inline Core& this_core() {
  Core* c = tls_core;
  if (c == nullptr) [[unlikely]] return register_core();
  return *c;
}

// Outermost scope entry: go online. The exchange is a full fence, so either the
// evictor sees us online, or we see its new generation and flush.
inline void scope_enter(Core& c) {
  ++c.scope_serial;
  c.ack.exchange(c.seen_gen, std::memory_order_seq_cst);
  std::uint64_t g = g_shootdown_gen.load(std::memory_order_seq_cst);
  if (g != c.seen_gen) [[unlikely]] {
    flush_tlb(c);
    c.seen_gen = g;
    c.ack.store(g, std::memory_order_release);
  }
}

// Outermost scope exit: drop hazards and go offline (an offline core never holds
// up an eviction batch; it flushes on its next entry if the generation moved).
inline void scope_exit(Core& c) {
  if (c.npins != 0) [[unlikely]] release_pins(c);
  c.nhazards.store(0, std::memory_order_release);
  c.ack.store(c.seen_gen | kOffline, std::memory_order_release);
}

}  // namespace farmem::detail
