// Configuration: sizes, percentages and the FARMEM_* environment variables.
// Every bad value becomes a farmem::Error with one line naming the fix.
#include <unistd.h>

#include <cctype>
#include <cmath>
#include <cstdlib>
#include <string>

#include "farmem/runtime.hpp"
#include "runtime/metrics.hpp"
#include "tier/compressor.hpp"
#include "tier/page_seal.hpp"
#include "tier/redundancy.hpp"

namespace farmem {
namespace {

std::string trim(const std::string& s) {
  std::size_t b = s.find_first_not_of(" \t"), e = s.find_last_not_of(" \t");
  return b == std::string::npos ? std::string() : s.substr(b, e - b + 1);
}

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

const char* env(const char* name) {
  const char* v = std::getenv(name);
  return (v && *v) ? v : nullptr;
}

std::uint64_t parse_u64(const char* name, const char* v) {
  std::string s = trim(v);
  char* end = nullptr;
  errno = 0;
  unsigned long long x = std::strtoull(s.c_str(), &end, 10);
  if (s.empty() || s[0] == '-' || errno || *end)
    throw Error(std::string(name) + "='" + v + "' is not a non-negative integer");
  return x;
}

// A duration in milliseconds: "500ms", "5s" or a plain number of milliseconds.
std::uint64_t parse_ms(const char* name, const char* v) {
  std::string s = lower(trim(v));
  std::uint64_t scale = 1;
  if (s.size() > 2 && s.compare(s.size() - 2, 2, "ms") == 0) s.resize(s.size() - 2);
  else if (s.size() > 1 && s.back() == 's') s.pop_back(), scale = 1000;
  char* end = nullptr;
  errno = 0;
  const unsigned long long x = std::strtoull(s.c_str(), &end, 10);
  if (s.empty() || s[0] == '-' || errno || *end || x == 0 || x > 3600000 / scale)
    throw Error(std::string(name) + "='" + v + "' is not a duration; write e.g. 5s or 500ms (up to an hour)");
  return x * scale;
}

// A switch: "1" or "0".
bool parse_flag(const char* name, const char* v) {
  const std::string b = lower(trim(v));
  if (b != "0" && b != "1") throw Error(std::string(name) + "='" + v + "' is not 1 or 0");
  return b == "1";
}

}  // namespace

std::uint64_t parse_size(const std::string& text, const std::string& what) {
  std::string s = trim(text);
  auto bad = [&] {
    return Error(what + "='" + text + "' is not a size; write e.g. 512M, 2G or 1073741824");
  };
  if (s.empty() || !(std::isdigit(static_cast<unsigned char>(s[0])) || s[0] == '.')) throw bad();
  char* end = nullptr;
  double v = std::strtod(s.c_str(), &end);
  std::string unit = lower(trim(end));
  double mult;
  if (unit.empty() || unit == "b") mult = 1;
  else if (unit == "k" || unit == "kb" || unit == "kib") mult = 1024.0;
  else if (unit == "m" || unit == "mb" || unit == "mib") mult = 1024.0 * 1024;
  else if (unit == "g" || unit == "gb" || unit == "gib") mult = 1024.0 * 1024 * 1024;
  else if (unit == "t" || unit == "tb" || unit == "tib") mult = 1024.0 * 1024 * 1024 * 1024;
  else throw bad();
  double bytes = v * mult;
  if (!std::isfinite(bytes) || bytes < 0 || bytes > 9.0e18) throw bad();
  return static_cast<std::uint64_t>(bytes);
}

std::uint64_t parse_size_or_percent(const std::string& text, std::uint64_t whole,
                                    const std::string& what) {
  std::string s = trim(text);
  if (!s.empty() && s.back() == '%') {
    char* end = nullptr;
    std::string num = s.substr(0, s.size() - 1);
    double p = std::strtod(num.c_str(), &end);
    if (num.empty() || *end || !(p > 0) || p > 100)
      throw Error(what + "='" + text + "' is not a percentage; write e.g. 25%");
    return static_cast<std::uint64_t>(static_cast<double>(whole) * p / 100.0);
  }
  return parse_size(s, what);
}

std::uint64_t parse_local_mem(const std::string& text, const std::string& what) {
  std::uint64_t b = parse_size_or_percent(text, physical_memory_bytes(), what);
  if (b == 0)
    throw Error(what + "='" + text + "' is no budget; give at least 8M, or leave it out for 25% of this "
                "machine's memory");
  return b;
}

std::uint64_t physical_memory_bytes() {
  return static_cast<std::uint64_t>(sysconf(_SC_PHYS_PAGES)) *
         static_cast<std::uint64_t>(sysconf(_SC_PAGESIZE));
}

Config Config::from_env() {
  Config c;
  if (const char* v = env("FARMEM_LOCAL_MEM"))
    c.local_mem_bytes = parse_local_mem(v, "FARMEM_LOCAL_MEM");
  if (const char* v = env("FARMEM_FAR_MEM")) c.far_mem_bytes = parse_size(v, "FARMEM_FAR_MEM");
  if (const char* v = env("FARMEM_HW_MEM")) {
    c.hw_mem_bytes = parse_size(v, "FARMEM_HW_MEM");
    if (c.hw_mem_bytes < (1ull << 20))
      throw Error(std::string("FARMEM_HW_MEM=") + v + " is below 1M; raise it");
  }
  if (const char* v = env("FARMEM_HW_FAULTS")) {
    c.hw_faults = lower(trim(v));
    if (c.hw_faults != "thread" && c.hw_faults != "signal")
      throw Error(std::string("FARMEM_HW_FAULTS='") + v + "' is not thread or signal");
  }
  if (const char* v = env("FARMEM_HW_DIRTY")) {
    c.hw_dirty = lower(trim(v));
    if (c.hw_dirty != "track" && c.hw_dirty != "all")
      throw Error(std::string("FARMEM_HW_DIRTY='") + v + "' is not track or all");
  }
  if (const char* v = env("FARMEM_HW_FIRST_TOUCH")) {
    c.hw_first_touch = lower(trim(v));
    if (c.hw_first_touch != "kernel" && c.hw_first_touch != "runtime")
      throw Error(std::string("FARMEM_HW_FIRST_TOUCH='") + v + "' is not kernel or runtime");
  }
  if (const char* v = env("FARMEM_HW_KEEP_HOT")) c.hw_keep_hot = parse_flag("FARMEM_HW_KEEP_HOT", v);
  if (const char* v = env("FARMEM_HW_FAULT_AROUND")) c.hw_fault_around = parse_flag("FARMEM_HW_FAULT_AROUND", v);
  if (const char* v = env("FARMEM_BACKEND")) c.backend = v;
  if (const char* v = env("FARMEM_REDUNDANCY")) {
    c.redundancy = lower(trim(v));
    tier::parse_scheme(c.redundancy);  // a bad value is named now
  }
  if (const char* v = env("FARMEM_COMPRESS")) {
    c.compress = lower(trim(v));
    tier::parse_compress(c.compress);  // a bad value is named now
  }
  if (const char* v = env("FARMEM_PROTECT")) {
    c.protect = lower(trim(v));
    tier::parse_protect(c.protect);  // a bad value is named now
  }
  if (const char* v = env("FARMEM_COMPACT")) {
    const std::string t = lower(trim(v));
    std::uint64_t pct = t == "off" ? 0 : parse_u64("FARMEM_COMPACT", v);
    if (pct > 90)
      throw Error(std::string("FARMEM_COMPACT=") + v + " is out of range; use 1 to 90 (percent of holes) or 0 (off)");
    c.compact_pct = static_cast<unsigned>(pct);
  }
  if (const char* v = env("FARMEM_SERVER_TIMEOUT")) c.server_timeout_ms = parse_ms("FARMEM_SERVER_TIMEOUT", v);
  if (const char* v = env("FARMEM_EC_SPARE_READ")) c.ec_spare_read = parse_flag("FARMEM_EC_SPARE_READ", v);
  if (const char* v = env("FARMEM_REPAIR_RATE")) {
    std::string r = lower(trim(v));
    if (r.size() > 2 && r.compare(r.size() - 2, 2, "/s") == 0) r.resize(r.size() - 2);
    c.repair_rate = r == "0" ? 0 : parse_size(r, "FARMEM_REPAIR_RATE");
  }
  if (const char* v = env("FARMEM_SHM_DELAY_NS")) c.shm_delay_ns = parse_u64("FARMEM_SHM_DELAY_NS", v);
  if (const char* v = env("FARMEM_SERVER")) c.server_path = v;
  if (const char* v = env("FARMEM_TOKEN_FILE")) c.token_file = v;
  if (const char* v = env("FARMEM_TLS_CA")) c.tls_ca = v;
  if (const char* v = env("FARMEM_REDIS_AUTH_FILE")) c.redis_auth_file = v;
  if (const char* v = env("FARMEM_REDIS_WAIT")) {
    std::uint64_t n = parse_u64("FARMEM_REDIS_WAIT", v);
    if (n > 16) throw Error(std::string("FARMEM_REDIS_WAIT=") + v + " is out of range; use 0 to 16 replicas");
    c.redis_wait = static_cast<int>(n);
  }
  if (const char* v = env("FARMEM_EVICTOR_CPU")) {
    std::uint64_t cpu = parse_u64("FARMEM_EVICTOR_CPU", v);
    long ncpu = sysconf(_SC_NPROCESSORS_CONF);
    if (cpu >= static_cast<std::uint64_t>(ncpu))
      throw Error(std::string("FARMEM_EVICTOR_CPU=") + v + " but this machine has CPUs 0-" +
                  std::to_string(ncpu - 1));
    c.evictor_cpu = static_cast<int>(cpu);
  }
  if (const char* v = env("FARMEM_EVICT_BATCH")) {
    std::uint64_t b = parse_u64("FARMEM_EVICT_BATCH", v);
    if (b < 1 || b > 1024)
      throw Error(std::string("FARMEM_EVICT_BATCH=") + v + " is out of range; use 1 to 1024");
    c.evict_batch = static_cast<unsigned>(b);
  }
  if (const char* v = env("FARMEM_STATS")) {
    std::string s = lower(trim(v));
    if (s == "1" || s == "true" || s == "yes") c.stats_at_exit = true;
    else if (s == "0" || s == "false" || s == "no") c.stats_at_exit = false;
    else throw Error(std::string("FARMEM_STATS='") + v + "' is not a boolean; use 1 or 0");
  }
  if (const char* v = env("FARMEM_STATS_DIR")) c.stats_dir = v;
  if (const char* v = env("FARMEM_METRICS")) {
    c.metrics = trim(v);
    metrics::parse(c.metrics);  // a bad address is named now
  }
  return c;
}

}  // namespace farmem
