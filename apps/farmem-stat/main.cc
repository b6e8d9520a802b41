// farmem-stat: shows the live statistics farmem processes publish
// (runtime/live_stats.hpp) -- one process, or every one on this machine; once
// (counters and rates since start) or every N seconds like vmstat (rates over
// the interval); as text or one JSON object per process.
#include <signal.h>
#include <time.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "runtime/live_stats.hpp"

namespace live = farmem::live;

namespace {

void usage(FILE* out) {
  std::fprintf(out,
               "usage: farmem-stat [--json] [--watch SECONDS [--count N]] [PID...]\n"
               "  Shows the counters every farmem process (a program using farmem, a farmem-run\n"
               "  program, a farmem-server) publishes while it runs: faults and evictions (and their\n"
               "  rates), resident memory against the budget, far bytes (and per memory server), the\n"
               "  fault-latency histogram, a server's client sessions, and the settings and\n"
               "  transports in use. Without PID: every farmem process here.\n"
               "  --json           one JSON object per process (counter names as in FARMEM_STATS)\n"
               "  --watch SECONDS  a line per process every SECONDS (like vmstat): rates over the interval\n"
               "  --count N        with --watch: stop after N lines per process\n"
               "  Reads FARMEM_STATS_DIR (default %s), as the processes write it.\n",
               live::kDefaultDir);
}

[[noreturn]] void die(const std::string& msg, int status = 2) {
  std::fprintf(stderr, "farmem-stat: %s\n", msg.c_str());
  std::exit(status);
}

std::uint64_t now_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<std::uint64_t>(ts.tv_nsec);
}

std::uint64_t counter(const live::Reading& r, const char* name) {
  const auto& defs = live::counters_of(r.h.kind);
  for (std::size_t i = 0; i < defs.size(); ++i)
    if (std::strcmp(defs[i].name, name) == 0) return r.s.counters[i];
  return 0;
}

// A count's growth over an interval; a program may reset the histogram
// (farmem::reset_fault_histogram), and then it counts from zero.
std::uint64_t delta(std::uint64_t now, std::uint64_t before) { return now >= before ? now - before : now; }

// Lower bound (ns) of log-linear bucket b (as detail::hist_value).
std::uint64_t bucket_low(unsigned b) { return b < 8 ? b : (std::uint64_t{8} | (b & 7)) << (b / 8 - 3); }

// The q-quantile of a histogram (a bucket's lower bound), 0 when empty.
std::uint64_t quantile(const std::uint64_t* h, double q) {
  std::uint64_t total = 0;
  for (unsigned b = 0; b < live::kHistBuckets; ++b) total += h[b];
  if (total == 0) return 0;
  const std::uint64_t want = static_cast<std::uint64_t>(q * static_cast<double>(total - 1)) + 1;
  std::uint64_t seen = 0;
  for (unsigned b = 0; b < live::kHistBuckets; ++b)
    if ((seen += h[b]) >= want) return bucket_low(b);
  return 0;
}

std::string human_ns(std::uint64_t ns) {
  char b[32];
  if (ns < 1000) std::snprintf(b, sizeof b, "%llu ns", static_cast<unsigned long long>(ns));
  else if (ns < 1000000) std::snprintf(b, sizeof b, "%.1f us", ns / 1e3);
  else if (ns < 1000000000) std::snprintf(b, sizeof b, "%.1f ms", ns / 1e6);
  else std::snprintf(b, sizeof b, "%.2f s", ns / 1e9);
  return b;
}

std::string mib(std::uint64_t bytes) {
  char b[32];
  std::snprintf(b, sizeof b, "%.1f MiB", bytes / 1048576.0);
  return b;
}

const char* kind_name(const live::Reading& r) { return r.h.kind == live::kKindServer ? "server" : "runtime"; }

// Power-of-two latency ranges: [2^k, 2^(k+1)) ns holds log-linear buckets 8k..8k+7.
std::map<unsigned, std::uint64_t> pow2_hist(const std::uint64_t* h) {
  std::map<unsigned, std::uint64_t> m;
  for (unsigned b = 0; b < live::kHistBuckets; ++b)
    if (h[b]) m[b < 8 ? (b < 1 ? 0 : 63 - __builtin_clzll(b)) : b / 8] += h[b];
  return m;
}

void append_json_string(std::string& j, const std::string& v) {
  j += '"';
  for (char c : v) {
    if (c == '"' || c == '\\') j += '\\';
    if (static_cast<unsigned char>(c) >= 0x20) j += c;
  }
  j += '"';
}

// The row table: "servers" (a runtime's memory servers) or "client_sessions" (a server's clients).
void rows_json(std::string& j, const live::Reading& r) {
  if (r.s.nrows == 0) return;
  const bool server = r.h.kind == live::kKindServer;
  const auto& fields = live::row_fields(r.h.kind);
  j += server ? ",\"client_sessions\":[" : ",\"servers\":[";
  for (std::size_t i = 0; i < r.s.nrows; ++i) {
    const live::Row& row = r.s.rows[i];
    j += i ? ",{" : "{";
    j += server ? "\"session\":" + std::to_string(row.id) + ",\"client\":" : "\"slot\":" + std::to_string(row.id) + ",\"server\":";
    append_json_string(j, row.label_text());
    for (std::size_t f = 0; f < fields.size(); ++f) j += ",\"" + std::string(fields[f].name) + "\":" + std::to_string(row.v[f]);
    j += "}";
  }
  j += "]";
  if (r.s.rows_dropped) j += ",\"rows_not_shown\":" + std::to_string(r.s.rows_dropped);
}

// The row table as text lines.
void show_rows(const live::Reading& r) {
  if (r.s.nrows == 0) return;
  if (r.h.kind == live::kKindServer) {
    std::printf("  client sessions:\n");
    for (std::size_t i = 0; i < r.s.nrows; ++i) {
      const live::Row& row = r.s.rows[i];
      std::printf("    session %-4llu %-24s granted %s, written %s, read %s\n", static_cast<unsigned long long>(row.id),
                  row.label_text().c_str(), mib(row.v[0]).c_str(), mib(row.v[1]).c_str(), mib(row.v[2]).c_str());
    }
  } else {
    std::printf("  far bytes per server:\n");
    for (std::size_t i = 0; i < r.s.nrows; ++i) {
      const live::Row& row = r.s.rows[i];
      std::printf("    %-32s far %s, written %s%s\n", row.label_text().c_str(), mib(row.v[0]).c_str(),
                  mib(row.v[1]).c_str(), row.v[2] ? "" : " (not up)");
    }
  }
  if (r.s.rows_dropped) std::printf("    (%llu more not shown)\n", static_cast<unsigned long long>(r.s.rows_dropped));
}

std::string json(const live::Reading& r, const live::Reading* prev) {
  std::string j = "{\"pid\":" + std::to_string(r.h.pid) + ",\"program\":\"";
  for (const char* c = r.h.name; *c && c < r.h.name + sizeof r.h.name; ++c)
    if (*c != '"' && *c != '\\' && static_cast<unsigned char>(*c) >= 0x20) j += *c;
  j += std::string("\",\"kind\":\"") + kind_name(r) + "\"";
  char up[48];
  std::snprintf(up, sizeof up, ",\"uptime_s\":%.3f", (r.s.updated_ns - r.h.started_ns) / 1e9);
  j += up;
  const auto& defs = live::counters_of(r.h.kind);
  for (std::size_t i = 0; i < defs.size(); ++i) j += ",\"" + std::string(defs[i].name) + "\":" + std::to_string(r.s.counters[i]);
  if (prev) {  // rates over the interval
    const double dt = (r.s.updated_ns - prev->s.updated_ns) / 1e9;
    j += ",\"interval_s\":" + std::to_string(dt);
    for (std::size_t i = 0; i < defs.size(); ++i)
      if (!defs[i].gauge) {
        const double rate = dt > 0 ? delta(r.s.counters[i], prev->s.counters[i]) / dt : 0.0;
        char b[64];
        std::snprintf(b, sizeof b, ",\"%s_per_s\":%.1f", defs[i].name, rate);
        j += b;
      }
  }
  if (r.h.kind == live::kKindRuntime) {
    std::uint64_t h[live::kHistBuckets];
    for (unsigned b = 0; b < live::kHistBuckets; ++b) h[b] = delta(r.s.hist[b], prev ? prev->s.hist[b] : 0);
    j += ",\"fault_latency_ns\":{";
    bool first = true;
    for (auto [k, n] : pow2_hist(h)) {
      j += (first ? "\"" : ",\"") + std::to_string(std::uint64_t{1} << k) + "\":" + std::to_string(n);
      first = false;
    }
    j += "}";
  }
  rows_json(j, r);
  const std::string info = r.s.info_text();
  if (!info.empty()) j += ",\"settings\":" + info;
  return j + "}";
}

void show(const live::Reading& r) {
  const double up = (r.s.updated_ns - r.h.started_ns) / 1e9;
  std::printf("pid %lld (%s): farmem %s, up %.1f s\n", static_cast<long long>(r.h.pid), r.h.name, kind_name(r), up);
  if (r.h.kind == live::kKindServer) {
    std::printf("  listeners %llu, clients %llu, granted %s of %s capacity\n",
                static_cast<unsigned long long>(counter(r, "listeners")),
                static_cast<unsigned long long>(counter(r, "clients")), mib(counter(r, "granted_bytes")).c_str(),
                mib(counter(r, "capacity_bytes")).c_str());
  } else {
    const std::uint64_t budget = counter(r, "local_mem_bytes"), res = counter(r, "resident_bytes");
    std::printf("  resident %s of %s budget (%.0f%%), far %s\n", mib(res).c_str(), mib(budget).c_str(),
                budget ? 100.0 * res / budget : 0.0, mib(counter(r, "far_bytes")).c_str());
    auto rate = [&](const char* n) { return up > 0 ? counter(r, n) / up : 0.0; };
    std::printf("  faults %llu (%.0f/s avg), evictions %llu (%.0f/s avg), fetches %llu, prefetches %llu, "
                "writebacks %llu, alloc stalls %llu\n",
                static_cast<unsigned long long>(counter(r, "faults")), rate("faults"),
                static_cast<unsigned long long>(counter(r, "evictions")), rate("evictions"),
                static_cast<unsigned long long>(counter(r, "fetches")),
                static_cast<unsigned long long>(counter(r, "prefetches")),
                static_cast<unsigned long long>(counter(r, "writebacks")),
                static_cast<unsigned long long>(counter(r, "alloc_stalls")));
    if (std::uint64_t hw = counter(r, "hw_faults"))
      std::printf("  transparent region: faults %llu, evicted %llu\n", static_cast<unsigned long long>(hw),
                  static_cast<unsigned long long>(counter(r, "hw_evicted")));
    const auto m = pow2_hist(r.s.hist);
    std::uint64_t most = 0;
    for (auto [k, n] : m) most = std::max(most, n);
    if (most) {
      std::printf("  fault latency: p50 %s, p99 %s, max %s\n", human_ns(quantile(r.s.hist, 0.5)).c_str(),
                  human_ns(quantile(r.s.hist, 0.99)).c_str(), human_ns(counter(r, "fault_max_ns")).c_str());
      for (auto [k, n] : m) {
        const int bar = static_cast<int>(40.0 * n / most + 0.5);
        std::printf("    %9s - %-9s %10llu %.*s\n", human_ns(std::uint64_t{1} << k).c_str(),
                    human_ns(std::uint64_t{2} << k).c_str(), static_cast<unsigned long long>(n), bar,
                    "########################################");
      }
    }
  }
  show_rows(r);
  const std::string info = r.s.info_text();
  if (!info.empty()) std::printf("  settings %s\n", info.c_str());
}

// One vmstat-like line: rates over the interval since prev.
void show_row(const live::Reading& r, const live::Reading& prev) {
  const double dt = (r.s.updated_ns - prev.s.updated_ns) / 1e9;
  auto per_s = [&](const char* n) { return dt > 0 ? delta(counter(r, n), counter(prev, n)) / dt : 0.0; };
  if (r.h.kind == live::kKindServer) {
    std::printf("%7lld %-10.10s %8s %8s %8s %8s %9s %9s %9s  clients %llu, granted %s of %s\n",
                static_cast<long long>(r.h.pid), r.h.name, "-", "-", "-", "-", "-", "-", "-",
                static_cast<unsigned long long>(counter(r, "clients")), mib(counter(r, "granted_bytes")).c_str(),
                mib(counter(r, "capacity_bytes")).c_str());
    return;
  }
  std::uint64_t h[live::kHistBuckets];
  for (unsigned b = 0; b < live::kHistBuckets; ++b) h[b] = delta(r.s.hist[b], prev.s.hist[b]);
  std::printf("%7lld %-10.10s %8.0f %8.0f %8.1f %8.1f %9.1f %9.1f %9.1f %8s %8s\n", static_cast<long long>(r.h.pid),
              r.h.name, per_s("faults"), per_s("evictions"), per_s("bytes_in") / 1048576.0,
              per_s("bytes_out") / 1048576.0, counter(r, "resident_bytes") / 1048576.0,
              counter(r, "local_mem_bytes") / 1048576.0, counter(r, "far_bytes") / 1048576.0,
              human_ns(quantile(h, 0.5)).c_str(), human_ns(quantile(h, 0.99)).c_str());
}

// Reads one process; exits with one line when it publishes nothing.
bool read_pid(const std::string& dir, pid_t pid, live::Reading* r, bool must) {
  std::string err;
  if (live::read_file(dir, pid, r, &err)) return true;
  if (!must) return false;
  if (err == "not found" || err == "stale") {
    if (kill(pid, 0) != 0 && errno == ESRCH) die("no process " + std::to_string(pid), 1);
    die("process " + std::to_string(pid) + " publishes no farmem statistics in " + dir +
            " (not a farmem process, or it runs with FARMEM_STATS_DIR=off or another FARMEM_STATS_DIR)",
        1);
  }
  die(err, 1);
}

}  // namespace

int main(int argc, char** argv) {
  bool as_json = false;
  double watch = 0;
  long count = -1;
  std::vector<pid_t> pids;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) die(a + " needs a value; see --help");
      return argv[++i];
    };
    if (a == "--help" || a == "-h") {
      usage(stdout);
      return 0;
    } else if (a == "--json") {
      as_json = true;
    } else if (a == "--watch") {
      std::string v = value();
      char* end = nullptr;
      watch = std::strtod(v.c_str(), &end);
      if (v.empty() || *end || !(watch >= 0.2) || watch > 86400)
        die("--watch " + v + " is not a number of seconds from 0.2 to 86400");
    } else if (a == "--count") {
      std::string v = value();
      char* end = nullptr;
      count = std::strtol(v.c_str(), &end, 10);
      if (v.empty() || *end || count < 1) die("--count " + v + " is not a positive number");
    } else if (!a.empty() && a[0] == '-') {
      die("unknown option " + a + "; see --help");
    } else {
      char* end = nullptr;
      long pid = std::strtol(a.c_str(), &end, 10);
      if (a.empty() || *end || pid <= 0 || pid > 4194304) die(a + " is not a process id; see --help");
      pids.push_back(static_cast<pid_t>(pid));
    }
  }
  if (count > 0 && watch == 0) die("--count needs --watch SECONDS");
  const std::string dir = live::dir_from_env();
  if (dir == "off") die("FARMEM_STATS_DIR=off: processes publish nothing; unset it or name their directory");
  const bool all = pids.empty();
  if (all) pids = live::list(dir);

  std::map<pid_t, live::Reading> last;
  for (pid_t p : pids) {
    live::Reading r;
    if (read_pid(dir, p, &r, !all)) last[p] = r;
  }
  if (watch == 0) {
    if (last.empty()) {
      if (!as_json) std::printf("no farmem process publishes statistics in %s\n", dir.c_str());
      return 0;
    }
    for (auto& [p, r] : last) {
      if (as_json) std::printf("%s\n", json(r, nullptr).c_str());
      else show(r);
    }
    return 0;
  }

  // --watch: a header, then a line per process per interval.
  if (!as_json)
    std::printf("%7s %-10s %8s %8s %8s %8s %9s %9s %9s %8s %8s\n", "pid", "program", "faults/s", "evict/s", "in MB/s",
                "out MB/s", "res MiB", "budget", "far MiB", "p50", "p99");
  std::fflush(stdout);
  const std::uint64_t step = static_cast<std::uint64_t>(watch * 1e9);
  std::uint64_t next = now_ns() + step;
  for (long n = 0; count < 0 || n < count; ++n) {
    const std::uint64_t now = now_ns();
    if (next > now) {
      timespec ts{static_cast<time_t>((next - now) / 1000000000), static_cast<long>((next - now) % 1000000000)};
      nanosleep(&ts, nullptr);
    }
    next += step;
    if (all)  // processes that started since
      for (pid_t p : live::list(dir))
        if (!last.count(p)) {
          live::Reading r;
          if (read_pid(dir, p, &r, false)) last[p] = r;
        }
    for (auto it = last.begin(); it != last.end();) {
      live::Reading r;
      if (!read_pid(dir, it->first, &r, false)) {
        std::fprintf(stderr, "farmem-stat: process %lld ended\n", static_cast<long long>(it->first));
        it = last.erase(it);
        continue;
      }
      if (as_json) std::printf("%s\n", json(r, &it->second).c_str());
      else show_row(r, it->second);
      it->second = r;
      ++it;
    }
    std::fflush(stdout);
    if (last.empty() && !all) return 0;
  }
  return 0;
}
