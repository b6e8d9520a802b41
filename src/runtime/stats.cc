// Statistics: per-core counters and fault-latency histograms summed on demand,
// plus the evictor's counters; stats_json() is the FARMEM_STATS=1 line.
#include <cstdio>
#include <string>

#include "evict/evictor.hpp"
#include "hw/region.hpp"
#include "runtime/runtime.hpp"

namespace farmem {

namespace {
std::uint64_t percentile(const std::uint64_t* hist, unsigned n, std::uint64_t total, double q) {
  if (total == 0) return 0;
  std::uint64_t want = static_cast<std::uint64_t>(q * static_cast<double>(total - 1)) + 1, seen = 0;
  for (unsigned b = 0; b < n; ++b) {
    seen += hist[b];
    if (seen >= want) return detail::hist_value(b);
  }
  return 0;
}
}  // namespace

Stats stats() {
  Stats s;
  detail::Runtime* rt = detail::g_runtime_ptr.load(std::memory_order_acquire);
  if (rt == nullptr) return s;
  constexpr unsigned kB = detail::CoreStats::kHistBuckets;
  std::uint64_t hist[kB] = {};
  std::uint64_t total = 0;
  for (unsigned i = 0; i < detail::kMaxCores; ++i) {
    const detail::CoreStats& c = rt->cores[i].stats;
    s.faults += c.faults.load(std::memory_order_relaxed);
    s.zero_fills += c.zero_fills.load(std::memory_order_relaxed);
    s.fetches += c.fetches.load(std::memory_order_relaxed);
    s.prefetches += c.prefetches.load(std::memory_order_relaxed);
    s.rescues += c.rescues.load(std::memory_order_relaxed);
    s.alloc_stalls += c.alloc_stalls.load(std::memory_order_relaxed);
    s.hw_faults += c.hw_fills.load(std::memory_order_relaxed);
    s.hw_fault_ns += c.hw_fault_ns.load(std::memory_order_relaxed);
    s.hw_fetch_ns += c.hw_fetch_ns.load(std::memory_order_relaxed);
    s.hw_copy_ns += c.hw_copy_ns.load(std::memory_order_relaxed);
    s.hw_first_writes += c.hw_dirtied.load(std::memory_order_relaxed);
    for (unsigned b = 0; b < kB; ++b) {
      std::uint64_t v = c.fault_hist[b].load(std::memory_order_relaxed);
      hist[b] += v;
      total += v;
    }
  }
  for (unsigned b = 0; b < kB; ++b)
    if (hist[b]) s.fault_max_ns = detail::hist_value(b);
  s.fault_p50_ns = percentile(hist, kB, total, 0.50);
  s.fault_p99_ns = percentile(hist, kB, total, 0.99);
  s.rescues += rt->evictor_rescues.load(std::memory_order_relaxed);
  s.evictions = rt->evictions.load(std::memory_order_relaxed);
  s.writebacks = rt->writebacks.load(std::memory_order_relaxed);
  s.clean_drops = rt->clean_drops.load(std::memory_order_relaxed);
  s.shootdowns = rt->shootdowns.load(std::memory_order_relaxed);
  s.hw_evicted = rt->hw_evicted.load(std::memory_order_relaxed);
  s.hw_protect_ns = rt->hw_protect_ns.load(std::memory_order_relaxed);
  s.hw_writeback_ns = rt->hw_writeback_ns.load(std::memory_order_relaxed);
  s.hw_unmap_ns = rt->hw_unmap_ns.load(std::memory_order_relaxed);
  s.bytes_in = (s.fetches + s.prefetches) * detail::kPageSize;
  s.bytes_out = s.writebacks * detail::kPageSize;
  s.local_mem_bytes = std::uint64_t{rt->nframes} * detail::kPageSize;
  std::uint64_t free_frames = rt->evictor ? rt->evictor->free_frames() : rt->nframes;
  s.resident_bytes = (rt->nframes - std::min<std::uint64_t>(free_frames, rt->nframes)) * detail::kPageSize;
  std::int64_t remote = static_cast<std::int64_t>(rt->to_remote.load()) -
                        static_cast<std::int64_t>(s.fetches + s.prefetches) -
                        static_cast<std::int64_t>(rt->discarded_remote.load());
  s.far_bytes = remote > 0 ? static_cast<std::uint64_t>(remote) * detail::kPageSize : 0;
  return s;
}

void reset_fault_histogram() {
  detail::Runtime* rt = detail::g_runtime_ptr.load(std::memory_order_acquire);
  if (rt == nullptr) return;
  for (unsigned i = 0; i < detail::kMaxCores; ++i)
    for (auto& b : rt->cores[i].stats.fault_hist) b.store(0, std::memory_order_relaxed);
}

std::string stats_json() {
  Stats s = stats();
  char buf[1024];
  std::snprintf(buf, sizeof buf,
                "{\"farmem_stats\":1,\"faults\":%llu,\"zero_fills\":%llu,\"fetches\":%llu,\"prefetches\":%llu,"
                "\"evictions\":%llu,\"writebacks\":%llu,\"clean_drops\":%llu,\"rescues\":%llu,"
                "\"alloc_stalls\":%llu,\"shootdowns\":%llu,\"bytes_in\":%llu,\"bytes_out\":%llu,"
                "\"local_mem_bytes\":%llu,\"resident_bytes\":%llu,\"far_bytes\":%llu,"
                "\"fault_p50_ns\":%llu,\"fault_p99_ns\":%llu,\"fault_max_ns\":%llu}",
                (unsigned long long)s.faults, (unsigned long long)s.zero_fills,
                (unsigned long long)s.fetches, (unsigned long long)s.prefetches,
                (unsigned long long)s.evictions,
                (unsigned long long)s.writebacks, (unsigned long long)s.clean_drops,
                (unsigned long long)s.rescues, (unsigned long long)s.alloc_stalls,
                (unsigned long long)s.shootdowns, (unsigned long long)s.bytes_in,
                (unsigned long long)s.bytes_out, (unsigned long long)s.local_mem_bytes,
                (unsigned long long)s.resident_bytes, (unsigned long long)s.far_bytes,
                (unsigned long long)s.fault_p50_ns, (unsigned long long)s.fault_p99_ns,
                (unsigned long long)s.fault_max_ns);
  std::string line = buf;
  detail::Runtime* rt = detail::g_runtime_ptr.load(std::memory_order_acquire);
  if (rt != nullptr && rt->transport)
    if (std::string t = rt->transport->stats_json(); !t.empty()) line.insert(line.size() - 1, "," + t);
  // Which transparent-fault path this kernel gave us (issue: say which is used).
  if (hw::Region* r = rt ? rt->hw.load(std::memory_order_acquire) : nullptr) {
    line.pop_back();
    auto avg = [](std::uint64_t ns, std::uint64_t n) { return std::to_string(n ? ns / n : 0); };
    line += ",\"transparent_faults\":\"" + r->fault_path() + "\",\"hw_faults\":" + std::to_string(s.hw_faults) +
            ",\"hw_fault_avg_ns\":{\"fault_path\":" + avg(s.hw_fault_ns, s.hw_faults) +
            ",\"fetch\":" + avg(s.hw_fetch_ns, s.hw_faults) + ",\"uffdio_copy\":" + avg(s.hw_copy_ns, s.hw_faults) +
            "},\"hw_first_write_faults\":" + std::to_string(s.hw_first_writes) +
            ",\"hw_evicted\":" + std::to_string(s.hw_evicted) +
            ",\"hw_evict_avg_ns_per_page\":{\"write_protect\":" + avg(s.hw_protect_ns, s.hw_evicted) +
            ",\"write_back\":" + avg(s.hw_writeback_ns, s.hw_evicted) +
            ",\"unmap\":" + avg(s.hw_unmap_ns, s.hw_evicted) + "}";
    if (r->lazy())
      line += ",\"hw_kernel_first_touch\":{\"chunks_watched\":" + std::to_string(rt->hw_chunks_watched.load()) +
              ",\"pages_taken\":" + std::to_string(rt->hw_kernel_pages.load()) +
              ",\"scans\":" + std::to_string(rt->hw_scans.load()) +
              ",\"scan_avg_ns\":" + avg(rt->hw_scan_ns.load(), rt->hw_scans.load()) +
              ",\"reserved_frames_max\":" + std::to_string(rt->hw_reserved_max.load()) +
              ",\"throttled\":" + (r->throttled() ? "true" : "false") + "}";
    line += "}";
  }
  return line;
}

}  // namespace farmem
