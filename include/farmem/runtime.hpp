// The farmem runtime: configuration, start-up, statistics.
//
// The runtime starts itself from the environment (docs/configuration.md) on the
// first far allocation; call farmem::init() to configure it from code instead.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace farmem {

// A configuration or start-up problem; what() is one line naming the problem and the fix.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct Config {
  std::uint64_t local_mem_bytes = 0;   // local frame pool; 0 = 25% of physical memory
  std::uint64_t far_mem_bytes = 0;     // far address space; 0 = 64 GiB
  std::uint64_t hw_mem_bytes = 16ull << 30;  // transparent region (farmem_malloc), part of far memory
  // Who serves a fault on the transparent region: "thread" (a handler thread;
  // system calls may touch far pages) or "signal" (the faulting thread itself,
  // in a SIGBUS handler: faster, but a system call that touches a page that is
  // not local fails with EFAULT instead of waiting).
  std::string hw_faults = "thread";
  // Transparent pages: write "all" of them back when evicted, or "track" which
  // were written (a page read in goes in write-protected and its first write
  // costs one more fault), so the evictor drops clean ones without a write-back.
  std::string hw_dirty = "all";
  // Who fills a page of the transparent region that was never used: "kernel"
  // (a 2 MiB chunk is registered with userfaultfd only when the evictor first
  // takes pages from it; until then the kernel fills its pages at a kernel
  // fault's cost, and the evictor counts them with mincore) or "runtime" (the
  // whole region is registered at start; every first touch is a userfaultfd fault).
  std::string hw_first_touch = "kernel";
  // Transparent pages: an eviction group that comes back soon after it left
  // is kept longer (CLOCK passes over it for 1, 2, 4, then 8 revolutions).
  bool hw_keep_hot = true;
  // Transparent pages: after faults in a row at a steady stride, the pages
  // that follow at that stride come in with the fault (15 sequential, 7 strided).
  bool hw_fault_around = true;
  std::string backend = "shm";         // shm (embedded memory server) or tcp://HOST:PORT, or a pool:
                                       // several tcp:// URIs separated by commas
  std::string redundancy = "none";     // a pool's: none, replicas:N or ec:K+M (K data, M parity pieces)
  std::uint64_t server_timeout_ms = 0;  // a server silent this long is lost; 0 = 5000 in a pool, 10000 alone
  bool ec_spare_read = true;           // ec:K+M: ask K+1 pieces and take the first K that arrive
  std::string compress = "none";       // far pages compressed: none, lz4, zstd or zstd:LEVEL
  std::string protect = "none";        // far pages encrypted and checked: none or aead (AES-256-GCM)
  unsigned compact_pct = 20;           // compressed tier: holes (% of the server's spans) that start compaction; 0 = off
  std::uint64_t repair_rate = 256ull << 20;  // bytes of pages a second a pool rebuilds at most; 0 = no limit
  std::string token_file;              // shared secret for a networked memory server
  std::string tls_ca;                  // tcp+tls://: CA certificates (PEM) to check the server by; empty = the system's
  std::string redis_auth_file;         // redis://: "password" or "user password" (else from the URI)
  int redis_wait = -1;                 // redis://: replicas that must hold a written page; -1 = 1 if any
  std::uint64_t shm_delay_ns = 0;      // injected latency per transfer (shm)
  std::string server_path;             // farmem-server binary; empty = search
  int evictor_cpu = -1;                // -1 = last CPU
  unsigned evict_batch = 64;           // pages per eviction batch
  bool stats_at_exit = false;
  // Live statistics (farmem-stat): a page per process in this directory; empty = /dev/shm/farmem
  // (nothing published if it cannot be used), "off" = none.
  std::string stats_dir;
  std::string metrics;                 // HOST:PORT: Prometheus text at GET /metrics; empty = none
  bool populate_pool = false;          // fault the whole frame pool in at start (else as frames are used)
  bool lazy_connect = false;           // start the memory server, or connect to it, when the first page
                                       // goes far instead of at init (the preload shim; not rdma)
  std::string local_mem_from = "FARMEM_LOCAL_MEM";  // where the budget came from, for error messages
  bool keep_running_at_exit = false;   // at exit only print statistics; the evictor and server
                                       // keep serving whatever runs after (the preload shim)

  // Reads FARMEM_* variables; throws Error on a bad value.
  static Config from_env();
};

// Parses "512M", "2G", "4096", "1.5GiB"; throws Error naming `what` on failure.
std::uint64_t parse_size(const std::string& text, const std::string& what);
// Parses SIZE or PCT% (percentage of `whole`).
std::uint64_t parse_size_or_percent(const std::string& text, std::uint64_t whole,
                                    const std::string& what);
// A local-memory budget: SIZE or PCT% of physical memory, never 0; throws Error naming `what`.
std::uint64_t parse_local_mem(const std::string& text, const std::string& what);
std::uint64_t physical_memory_bytes();

// Fills in defaults (budget, far size, backend) and checks every value against
// this machine; throws Error naming the problem and the fix.
void check_config(Config& cfg);
void init(const Config& cfg);  // throws Error; a second call is an error
// Checks that cfg.backend is usable now: connects to a networked memory server
// and disconnects, or finds the embedded server's binary; throws Error.
void check_backend(const Config& cfg);
bool initialized();
void shutdown();               // stops the evictor and the memory server (also at exit)

struct Stats {
  std::uint64_t faults = 0, zero_fills = 0, fetches = 0, prefetches = 0, rescues = 0, alloc_stalls = 0;
  std::uint64_t evictions = 0, writebacks = 0, clean_drops = 0, shootdowns = 0;
  std::uint64_t bytes_in = 0, bytes_out = 0;
  std::uint64_t local_mem_bytes = 0, resident_bytes = 0, far_bytes = 0;
  std::uint64_t fault_p50_ns = 0, fault_p99_ns = 0, fault_max_ns = 0;
  // The transparent region: faults filled (with the pages fetched ahead, each
  // fault counts once), and summed time: in the fault path, of which fetching
  // and UFFDIO_COPY; pages evicted, and the evictor's time write-protecting,
  // writing back, and unmapping them. Trapping and signal delivery happen before
  // the fault path starts and are not in these.
  std::uint64_t hw_faults = 0, hw_fault_ns = 0, hw_fetch_ns = 0, hw_copy_ns = 0;
  std::uint64_t hw_first_writes = 0;  // FARMEM_HW_DIRTY=track: faults on the first write to a clean page
  // Faults on transparent pages that had left within the last budget's worth of
  // evictions: pages the evictor should have kept (a measure of its choices).
  std::uint64_t hw_quick_refaults = 0;
  // Frames CLOCK passed over because their group came back quickly before
  // (FARMEM_HW_KEEP_HOT): how often that rule kept pages.
  std::uint64_t hw_hot_passes = 0;
  std::uint64_t hw_evicted = 0, hw_protect_ns = 0, hw_writeback_ns = 0, hw_unmap_ns = 0;
};
Stats stats();
std::string stats_json();
void reset_fault_histogram();
// The fault-latency histogram since start or reset_fault_histogram(): every
// bucket that counted a fault (8 buckets per power of two), lowest first.
struct LatencyBucket {
  std::uint64_t lower_ns = 0;  // the bucket holds latencies from lower_ns up to the next bucket's
  std::uint64_t count = 0;
};
std::vector<LatencyBucket> fault_histogram();

}  // namespace farmem
