// Statistics: per-core counters and fault-latency histograms summed on demand,
// plus the evictor's counters; stats_json() is the FARMEM_STATS=1 line and
// collect_live() the same counters for the live page (runtime/live_stats.hpp).
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>

#include <sys/resource.h>

#include "evict/evictor.hpp"
#include "hw/region.hpp"
#include "runtime/live_stats.hpp"
#include "runtime/metrics.hpp"
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
constexpr unsigned kB = detail::CoreStats::kHistBuckets;
static_assert(kB == live::kHistBuckets);

// The counters, and the summed fault-latency histogram into hist[kB].
Stats gather(detail::Runtime* rt, std::uint64_t* hist) {
  Stats s;
  std::uint64_t total = 0;
  const unsigned cores = std::min<unsigned>(rt->core_hwm.load(std::memory_order_acquire), detail::kMaxCores);
  for (unsigned i = 0; i < cores; ++i) {
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
    s.hw_quick_refaults += c.hw_quick_refaults.load(std::memory_order_relaxed);
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
  s.hw_hot_passes = rt->hw_hot_passes.load(std::memory_order_relaxed);
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

void add_json(std::string& out, const char* key, const std::string& v) {
  out += out.size() > 1 ? ",\"" : "\"";
  out += key;
  out += "\":\"";
  for (char c : v) {
    if (c == '"' || c == '\\') out += '\\';
    if (static_cast<unsigned char>(c) >= 0x20) out += c;
  }
  out += '"';
}
void add_json(std::string& out, const char* key, std::uint64_t v) {
  out += out.size() > 1 ? ",\"" : "\"";
  out += key;
  out += "\":" + std::to_string(v);
}
}  // namespace

Stats stats() {
  detail::Runtime* rt = detail::g_runtime_ptr.load(std::memory_order_acquire);
  if (rt == nullptr) return Stats{};
  std::uint64_t hist[kB] = {};
  return gather(rt, hist);
}

namespace detail {
void collect_live(Runtime& rt, live::Snapshot& out, bool with_info) {
  std::memset(out.hist, 0, sizeof out.hist);
  const Stats s = gather(&rt, out.hist);
  const std::uint64_t v[] = {s.faults,     s.zero_fills,    s.fetches,         s.prefetches,      s.evictions,
                             s.writebacks, s.clean_drops,   s.rescues,         s.alloc_stalls,    s.shootdowns,
                             s.bytes_in,   s.bytes_out,     s.local_mem_bytes, s.resident_bytes,  s.far_bytes,
                             s.fault_p50_ns, s.fault_p99_ns, s.fault_max_ns,   s.hw_faults,       s.hw_first_writes,
                             s.hw_evicted, rt.transport && rt.transport->connected() ? 1u : 0u,
                             s.hw_quick_refaults, s.hw_hot_passes,
                             rt.evictor_clock.read().run_ns / 1000000, rt.handler_clock.read().run_ns / 1000000};
  static_assert(sizeof v / sizeof v[0] <= live::kMaxCounters);
  for (std::size_t i = 0; i < sizeof v / sizeof v[0]; ++i) out.counters[i] = v[i];
  // Far bytes per memory server: a pool's members from its counters; one
  // server is the runtime's own far and written bytes.
  out.nrows = out.rows_dropped = 0;
  if (rt.transport && rt.transport->connected()) {
    const std::vector<net::ServerBytes> per = rt.transport->per_server();
    for (const net::ServerBytes& b : per) out.add_row(b.slot, b.uri, b.far_bytes, b.written_bytes, b.up ? 1 : 0);
    if (per.empty()) out.add_row(0, rt.cfg.backend, s.far_bytes, s.bytes_out, 1);
  }
  out.updated_ns = now_ns();
  if (!with_info) return;
  const Config& c = rt.cfg;
  std::string j = "{";
  add_json(j, "backend", c.backend);
  if (rt.transport) add_json(j, "transport", rt.transport->describe());
  add_json(j, "local_mem_bytes", c.local_mem_bytes);
  add_json(j, "far_mem_bytes", c.far_mem_bytes);
  add_json(j, "hw_mem_bytes", c.hw_mem_bytes);
  add_json(j, "redundancy", c.redundancy);
  add_json(j, "compress", c.compress);
  add_json(j, "protect", c.protect);
  add_json(j, "evict_batch", c.evict_batch);
  add_json(j, "hw_faults", c.hw_faults);
  add_json(j, "hw_dirty", c.hw_dirty);
  add_json(j, "hw_first_touch", c.hw_first_touch);
  add_json(j, "hw_keep_hot", c.hw_keep_hot ? 1u : 0u);
  add_json(j, "hw_fault_around", c.hw_fault_around ? 1u : 0u);
  if (hw::Region* r = rt.hw.load(std::memory_order_acquire)) add_json(j, "transparent_faults", r->fault_path());
  if (rt.metrics) add_json(j, "metrics", rt.metrics->address());
  j += "}";
  out.set_info(j);
}
}  // namespace detail

std::vector<LatencyBucket> fault_histogram() {
  std::vector<LatencyBucket> out;
  detail::Runtime* rt = detail::g_runtime_ptr.load(std::memory_order_acquire);
  if (rt == nullptr) return out;
  std::uint64_t hist[kB] = {};
  gather(rt, hist);
  for (unsigned b = 0; b < kB; ++b)
    if (hist[b]) out.push_back(LatencyBucket{detail::hist_value(b), hist[b]});
  return out;
}

void reset_fault_histogram() {
  detail::Runtime* rt = detail::g_runtime_ptr.load(std::memory_order_acquire);
  if (rt == nullptr) return;
  for (unsigned i = 0; i < detail::kMaxCores; ++i)
    for (auto& b : rt->cores[i].stats.fault_hist) b.store(0, std::memory_order_relaxed);
}

namespace {
// The runtime's own threads against the whole process: CPU they took, and how
// long they waited for one (a busy evictor on a two-CPU machine is time the
// program waits too).
std::string runtime_threads_json(detail::Runtime& rt) {
  std::string j;
  auto ms = [](std::uint64_t ns) { return std::to_string(ns / 1000000); };
  auto add = [&](const char* name, const detail::ThreadClock& c) {
    const detail::ThreadTimes t = c.read();
    if (!t.known) return;
    j += std::string(j.empty() ? "" : ",") + "\"" + name + "\":{\"cpu_ms\":" + ms(t.run_ns) +
         ",\"runnable_ms\":" + ms(t.wait_ns) + "}";
  };
  add("evictor", rt.evictor_clock);
  add("fault_handler", rt.handler_clock);
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  const std::uint64_t proc_ns = (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000000ull +
                                (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1000ull;
  return ",\"runtime_threads\":{" + j + "},\"process_cpu_ms\":" + ms(proc_ns);
}
}  // namespace

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
  if (rt != nullptr) line.insert(line.size() - 1, runtime_threads_json(*rt));
  // Which transparent-fault path this kernel gave us (issue: say which is used).
  if (hw::Region* r = rt ? rt->hw.load(std::memory_order_acquire) : nullptr) {
    line.pop_back();
    auto avg = [](std::uint64_t ns, std::uint64_t n) { return std::to_string(n ? ns / n : 0); };
    line += ",\"transparent_faults\":\"" + r->fault_path() + "\",\"hw_faults\":" + std::to_string(s.hw_faults) +
            ",\"hw_fault_avg_ns\":{\"fault_path\":" + avg(s.hw_fault_ns, s.hw_faults) +
            ",\"fetch\":" + avg(s.hw_fetch_ns, s.hw_faults) + ",\"uffdio_copy\":" + avg(s.hw_copy_ns, s.hw_faults) +
            "},\"hw_first_write_faults\":" + std::to_string(s.hw_first_writes) +
            ",\"hw_quick_refaults\":" + std::to_string(s.hw_quick_refaults) +
            ",\"hw_hot_passes\":" + std::to_string(s.hw_hot_passes) +
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
