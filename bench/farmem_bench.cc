// farmem-bench: microbenchmarks of far memory against plain local memory.
// Each op reads and writes one 8-byte word in one page of the working set;
// the page is chosen uniformly (uniform), in order (seq) or by a Zipf law
// (zipf, theta 0.99). --mode sw goes through far pointers, --mode hw through
// plain pointers into the transparent region (farmem_malloc, userfaultfd), and
// --mode local through plain pointers to ordinary memory (run it under a memory
// cgroup with swap to measure Linux swap). Prints one JSON object per run with
// --json; a run longer than a few seconds reports its progress on stderr.
// --latency-csv FILE appends the measured ops' fault-latency histogram as a
// CDF (one row per bucket, with the run's configuration) for bench/plot.py.
#include <pthread.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "farmem/far.hpp"
#include "farmem/farmem.h"
#include "farmem/runtime.hpp"
#include "farmem/uthread.hpp"
#include "page_data.hpp"
#include "zipf.hpp"

namespace {

constexpr std::uint64_t kWordsPerPage = 4096 / 8;

struct Options {
  std::string workload = "uniform";
  std::string mode = "sw";
  std::uint64_t working_set = 1ull << 30;
  std::string local_mem = "25%";
  std::string backend;  // empty: FARMEM_BACKEND, else shm
  std::uint64_t ops = 5'000'000;
  unsigned threads = 1;
  unsigned uthreads = 0;  // per application thread; 0 = plain blocking threads
  bool json = false;
  bool verify = true;
  std::string latency_csv;  // --latency-csv: append the fault-latency CDF here
  bench::PageData data = bench::PageData::Zeros;
  std::uint64_t seed = 42;
};

[[noreturn]] void die(const std::string& msg) {
  std::fprintf(stderr, "farmem-bench: %s\n", msg.c_str());
  std::exit(2);
}

void usage() {
  std::printf(
      "usage: farmem-bench [--workload uniform|seq|zipf] [--mode sw|hw|local]\n"
      "                    [--working-set SIZE] [--local-mem SIZE|PCT%%] [--backend URI] [--ops N]\n"
      "                    [--threads N] [--uthreads N] [--seed N] [--data KIND] [--no-verify] [--json]\n"
      "                    [--latency-csv FILE]\n"
      "  Each op reads and writes one word of one page of the working set.\n"
      "  --workload     which page: uniform (default), seq (in order), zipf (theta 0.99)\n"
      "  --mode         sw: far pointers (default); hw: plain pointers into the transparent\n"
      "                 region (farmem_malloc, userfaultfd); local: ordinary memory (run it\n"
      "                 in a memory cgroup with swap to measure Linux swap: bench/swap_compare.sh)\n"
      "  --working-set  bytes the ops spread over (default 1G)\n"
      "  --local-mem    local-memory budget, SIZE or PCT%% of the working set (default 25%%)\n"
      "  --backend      where far memory lives: shm (default: a memory server on this machine),\n"
      "                 tcp://HOST:PORT, tcp+tls://HOST:PORT, redis://HOST:PORT, rdma://HOST:PORT,\n"
      "                 dpdk://... or file:///PATH\n"
      "                 (an SSD tier: a file made in PATH, or a block device); overrides FARMEM_BACKEND\n"
      "  --ops          measured ops (default 5000000), after a tenth as many to warm up\n"
      "  --threads      application threads (default 1)\n"
      "  --uthreads     uthreads per application thread (default 0: plain blocking threads)\n"
      "  --seed         random seed (default 42)\n"
      "  --data         what the pages hold: zeros (default: one word set), text, ints,\n"
      "                 random or mixed (40%% text, 30%% ints, 20%% zeros, 10%% random pages);\n"
      "                 what FARMEM_COMPRESS is measured on (bench/page_data.hpp)\n"
      "  --no-verify    skip the check of every word after the run\n"
      "  --json         one JSON object on stdout instead of the text summary\n"
      "  --latency-csv  append the measured ops' fault-latency CDF to FILE (header if new):\n"
      "                 bench,transport,mode,workload,local_pct,working_set_bytes,threads,\n"
      "                 latency_ns,count,cumulative_fraction -- one row per histogram bucket\n"
      "                 (its lower bound); bench/plot.py draws it, bench/latency_cdf.sh runs it\n"
      "  Runs longer than a few seconds print progress on stderr. Other settings come from\n"
      "  FARMEM_* variables (docs/configuration.md) and apply to --mode sw and hw.\n");
}

std::uint64_t parse_count(const std::string& flag, const std::string& v) {
  char* end = nullptr;
  errno = 0;
  unsigned long long x = std::strtoull(v.c_str(), &end, 10);
  if (v.empty() || v[0] == '-' || errno || *end) die(flag + " '" + v + "' is not a positive integer");
  return x;
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) die(a + " needs a value; see --help");
      return argv[++i];
    };
    try {
      if (a == "--help" || a == "-h") { usage(); std::exit(0); }
      else if (a == "--workload") o.workload = value();
      else if (a == "--mode") o.mode = value();
      else if (a == "--working-set") o.working_set = farmem::parse_size(value(), "--working-set");
      else if (a == "--local-mem") o.local_mem = value();
      else if (a == "--backend") o.backend = value();
      else if (a == "--ops") o.ops = parse_count(a, value());
      else if (a == "--threads") o.threads = static_cast<unsigned>(parse_count(a, value()));
      else if (a == "--uthreads") o.uthreads = static_cast<unsigned>(parse_count(a, value()));
      else if (a == "--seed") o.seed = parse_count(a, value());
      else if (a == "--json") o.json = true;
      else if (a == "--latency-csv") o.latency_csv = value();
      else if (a == "--data") {
        std::string d = value();
        if (!bench::parse_page_data(d, &o.data)) die("--data '" + d + "' is not one of zeros, text, ints, random, mixed");
      }
      else if (a == "--no-verify") o.verify = false;
      else die("unknown option " + a + "; see --help");
    } catch (const farmem::Error& e) {
      die(e.what());
    }
  }
  if (o.workload != "uniform" && o.workload != "seq" && o.workload != "zipf")
    die("--workload '" + o.workload + "' is not one of uniform, seq, zipf");
  if (o.mode != "sw" && o.mode != "local" && o.mode != "hw")
    die("--mode '" + o.mode + "' is not one of sw, hw, local");
  if (o.working_set < 4096) die("--working-set must be at least 4K");
  if (o.threads < 1 || o.threads > 60) die("--threads must be between 1 and 60");
  if (o.ops < o.threads) die("--ops must be at least --threads");
  if (o.uthreads > 100000) die("--uthreads must be at most 100000");
  if (o.uthreads && o.mode == "local") die("--uthreads needs --mode sw or hw");
  if (!o.latency_csv.empty() && o.mode == "local")
    die("--latency-csv needs --mode sw or hw: --mode local takes no farmem faults");
  return o;
}

// How the latency CSV names a backend: its scheme (shm when none is set), "pool" for several.
std::string transport_name(const std::string& backend) {
  if (backend.empty() || backend == "shm") return "shm";
  if (backend.find(',') != std::string::npos || backend[0] == '@') return "pool";
  const std::size_t colon = backend.find("://");
  return colon == std::string::npos ? backend : backend.substr(0, colon);
}

// --latency-csv: one row per histogram bucket, the cumulative fraction of
// faults at or below it; the header when the file is new.
void write_latency_csv(FILE* f, const Options& o, const std::string& transport, double local_pct,
                       std::uint64_t ws, const std::vector<farmem::LatencyBucket>& hist) {
  std::fseek(f, 0, SEEK_END);
  if (std::ftell(f) == 0)
    std::fprintf(f, "bench,transport,mode,workload,local_pct,working_set_bytes,threads,latency_ns,count,"
                    "cumulative_fraction\n");
  std::uint64_t total = 0, seen = 0;
  for (const auto& b : hist) total += b.count;
  for (const auto& b : hist) {
    seen += b.count;
    std::fprintf(f, "farmem-bench,%s,%s,%s,%.4g,%llu,%u,%llu,%llu,%.6f\n", transport.c_str(), o.mode.c_str(),
                 o.workload.c_str(), local_pct, (unsigned long long)ws, o.threads, (unsigned long long)b.lower_ns,
                 (unsigned long long)b.count, static_cast<double>(seen) / static_cast<double>(total));
  }
  if (std::fclose(f) != 0) die("--latency-csv " + o.latency_csv + ": cannot write it (" + std::strerror(errno) + ")");
  if (total == 0)
    std::fprintf(stderr, "farmem-bench: --latency-csv: the measured ops took no faults (the working set fits); "
                         "nothing written\n");
}

struct Rng {  // xorshift64*
  std::uint64_t s;
  explicit Rng(std::uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull | 1) {}
  std::uint64_t next() {
    s ^= s >> 12; s ^= s << 25; s ^= s >> 27;
    return s * 0x2545F4914F6CDD1Dull;
  }
  double uniform() { return static_cast<double>(next() >> 11) * (1.0 / 9007199254740992.0); }  // [0, 1)
};

using farmem::bench::Zipf;

void pin_to_cpu(unsigned t) {
  long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
  long app_cpus = ncpu > 1 ? ncpu - 1 : 1;  // the last CPU belongs to the evictor
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(static_cast<int>(t % app_cpus), &set);
  pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

std::uint64_t vmstat(const char* key) {
  std::ifstream f("/proc/vmstat");
  std::string k;
  std::uint64_t v;
  while (f >> k >> v)
    if (k == key) return v;
  return 0;
}

std::uint64_t kernel_faults() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<std::uint64_t>(ru.ru_majflt + ru.ru_minflt);
}

// Ops done so far, summed by the workers every kProgressStep ops, and a thread
// that reports them on stderr every 5 s once a phase has run for 3 s.
constexpr std::uint64_t kProgressStep = 1 << 14;
std::atomic<std::uint64_t> g_done{0};

class Progress {
 public:
  Progress(const char* phase, std::uint64_t total) : phase_(phase), total_(total) {
    g_done.store(0, std::memory_order_relaxed);
    thread_ = std::thread([this] { loop(); });
  }
  ~Progress() {
    {
      std::lock_guard<std::mutex> g(mu_);
      stop_ = true;
    }
    cv_.notify_one();
    thread_.join();
  }

 private:
  void loop() {
    const auto t0 = std::chrono::steady_clock::now();
    auto next = t0 + std::chrono::seconds(3);
    std::unique_lock<std::mutex> g(mu_);
    while (!cv_.wait_until(g, next, [this] { return stop_; })) {
      const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      const std::uint64_t done = g_done.load(std::memory_order_relaxed);
      std::fprintf(stderr, "farmem-bench: %s %llu of %llu ops (%.0f%%), %.0f s\n", phase_,
                   static_cast<unsigned long long>(done), static_cast<unsigned long long>(total_),
                   total_ ? 100.0 * static_cast<double>(done) / static_cast<double>(total_) : 0.0, secs);
      next += std::chrono::seconds(5);
    }
  }
  const char* phase_;
  std::uint64_t total_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;
};

// Worker t of `workers`: its share of the ops, each on one page chosen by the workload.
template <class Access>
void worker_ops(const Options& o, std::uint64_t pages, std::uint64_t ops, std::uint64_t seed_base,
                const Zipf* zipf, Access& access, unsigned t, unsigned workers) {
  Rng rng(seed_base + t);
  const std::uint64_t n = ops / workers + (t < ops % workers ? 1 : 0);
  std::uint64_t seq = pages * t / workers;
  for (std::uint64_t i = 0; i < n; ++i) {
    std::uint64_t r = rng.next();
    std::uint64_t page;
    if (o.workload == "uniform") page = r % pages;
    else if (o.workload == "seq") page = seq++ % pages;
    else page = zipf->at(rng.uniform());
    access(page, (r >> 40) % kWordsPerPage);
    if ((i + 1) % kProgressStep == 0) g_done.fetch_add(kProgressStep, std::memory_order_relaxed);
  }
}

// Runs ops/threads ops per thread through `access(page, word)`; returns seconds.
template <class Access>
double run_ops(const Options& o, std::uint64_t pages, std::uint64_t ops, std::uint64_t seed_base,
               const Zipf* zipf, Access access) {
  std::atomic<unsigned> ready{0};
  std::atomic<bool> go{false};
  std::vector<std::thread> ts;
  for (unsigned t = 0; t < o.threads; ++t) {
    ts.emplace_back([&, t] {
      pin_to_cpu(t);
      ready.fetch_add(1);
      while (!go.load(std::memory_order_acquire)) {
      }
      worker_ops(o, pages, ops, seed_base, zipf, access, t, o.threads);
    });
  }
  while (ready.load() < o.threads) std::this_thread::yield();
  auto t0 = std::chrono::steady_clock::now();
  go.store(true, std::memory_order_release);
  for (auto& t : ts) t.join();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// The same ops spread over threads*uthreads uthreads on `threads` schedulers.
template <class Access>
double run_ops_uthreads(const Options& o, std::uint64_t pages, std::uint64_t ops,
                        std::uint64_t seed_base, const Zipf* zipf, Access access) {
  const unsigned total = o.threads * o.uthreads;
  farmem::uthread::WaitGroup wg;
  wg.add(total);
  auto t0 = std::chrono::steady_clock::now();
  for (unsigned t = 0; t < total; ++t) {
    farmem::uthread::spawn([&, t] {
      worker_ops(o, pages, ops, seed_base, zipf, access, t, total);
      wg.done();
    }).detach();
  }
  wg.wait();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Where the measured ops' transparent faults spent their time, per fault (in
// the fault path: fetching, UFFDIO_COPY, the rest waiting for frames and
// bookkeeping) and the evictor's per page. The trap and the signal or thread
// hand-off come before the fault path and are not in it.
std::string hw_breakdown(const farmem::Stats& a, const farmem::Stats& b) {
  auto avg = [](std::uint64_t ns, std::uint64_t n) { return std::to_string(n ? ns / n : 0); };
  const std::uint64_t f = b.hw_faults - a.hw_faults, e = b.hw_evicted - a.hw_evicted;
  return ",\"hw_fault_path_ns\":" + avg(b.hw_fault_ns - a.hw_fault_ns, f) +
         ",\"hw_fetch_ns\":" + avg(b.hw_fetch_ns - a.hw_fetch_ns, f) +
         ",\"hw_copy_ns\":" + avg(b.hw_copy_ns - a.hw_copy_ns, f) +
         ",\"hw_evict_protect_ns\":" + avg(b.hw_protect_ns - a.hw_protect_ns, e) +
         ",\"hw_evict_writeback_ns\":" + avg(b.hw_writeback_ns - a.hw_writeback_ns, e) +
         ",\"hw_evict_unmap_ns\":" + avg(b.hw_unmap_ns - a.hw_unmap_ns, e) +
         ",\"prefetches\":" + std::to_string(b.prefetches - a.prefetches);
}

}  // namespace

int main(int argc, char** argv) {
  Options o = parse(argc, argv);
  const std::uint64_t pages = (o.working_set + 4095) / 4096;
  const std::uint64_t words = pages * kWordsPerPage;
  std::uint64_t local_mem = 0;
  try {
    local_mem = farmem::parse_size_or_percent(o.local_mem, pages * 4096, "--local-mem");
  } catch (const farmem::Error& e) {
    die(e.what());
  }
  std::unique_ptr<Zipf> zipf;
  if (o.workload == "zipf") zipf = std::make_unique<Zipf>(pages, 0.99);
  const std::uint64_t warm_ops = std::max<std::uint64_t>(o.ops / 10, o.threads);

  FILE* latency_out = nullptr;
  std::string transport = "local";
  if (!o.latency_csv.empty()) {  // before the run: a file that cannot be written is found at once
    latency_out = std::fopen(o.latency_csv.c_str(), "a");
    if (latency_out == nullptr)
      die("--latency-csv " + o.latency_csv + ": cannot write it (" + std::strerror(errno) + "); name a writable file");
  }
  double seconds = 0;
  std::uint64_t faults = 0, evictions = 0, p50 = 0, p99 = 0;
  farmem::Stats before{}, after{}, end{};  // after: right after the measured ops
  std::vector<farmem::LatencyBucket> hist;  // the measured ops' fault latencies
  bool verified = false;
  std::uint64_t expect_sum = warm_ops + o.ops;  // plus what the pages start with (--data)

  if (o.mode != "local") {
    try {
      farmem::Config cfg = farmem::Config::from_env();
      cfg.local_mem_bytes = local_mem;
      cfg.local_mem_from = "--local-mem";
      if (!o.backend.empty()) cfg.backend = o.backend;
      transport = transport_name(cfg.backend);
      if (cfg.far_mem_bytes == 0) cfg.far_mem_bytes = std::max<std::uint64_t>(64ull << 30, 4 * pages * 4096);
      if (o.mode == "hw") {
        cfg.hw_mem_bytes = std::max(cfg.hw_mem_bytes, pages * 4096);
      }
      farmem::init(cfg);
    } catch (const farmem::Error& e) {
      die(e.what());
    }
  }
  if (o.mode == "sw") {
    farmem::FarArray<std::uint64_t> a(words);
    {
      for (std::uint64_t p = 0; p < pages; ++p) {
        farmem::Scope s;
        expect_sum += bench::fill_page(o.data, p, &a.mut(s, p * kWordsPerPage));
      }
    }
    auto access = [&a](std::uint64_t page, std::uint64_t word) {
      farmem::Scope s;
      a.mut(s, page * kWordsPerPage + word) += 1;
    };
    if (o.uthreads) farmem::uthread::start(o.threads);
    auto run = [&](std::uint64_t n, std::uint64_t seed) {
      Progress progress(seed == o.seed ? "measured" : "warm-up", n);
      return o.uthreads ? run_ops_uthreads(o, pages, n, seed, zipf.get(), access)
                        : run_ops(o, pages, n, seed, zipf.get(), access);
    };
    run(warm_ops, o.seed + 1000);
    farmem::reset_fault_histogram();
    before = farmem::stats();
    seconds = run(o.ops, o.seed);
    after = farmem::stats();
    hist = farmem::fault_histogram();
    if (o.uthreads) farmem::uthread::stop();
    faults = after.faults - before.faults;
    evictions = after.evictions - before.evictions;
    p50 = after.fault_p50_ns;
    p99 = after.fault_p99_ns;
    if (o.verify) {
      std::uint64_t sum = 0;
      for (std::uint64_t p = 0; p < pages; ++p) {
        farmem::Scope s;
        const std::uint64_t* w = &a.get(s, p * kWordsPerPage);
        for (std::uint64_t k = 0; k < kWordsPerPage; ++k) sum += w[k];
      }
      verified = sum == expect_sum;
      if (!verified)
        die("verification FAILED: sum of the working set is " + std::to_string(sum) + ", expected " +
            std::to_string(expect_sum));
    }
    end = farmem::stats();  // after verifying: only for the resident/far lines
  } else {
    void* m;
    if (o.mode == "hw") {  // the transparent region: plain pointers, userfaultfd paging
      m = farmem_malloc(pages * 4096);
      if (m == nullptr && errno == ENOSYS) std::exit(2);  // farmem printed why
      if (m == nullptr) die("the transparent region cannot hold the working set; raise FARMEM_HW_MEM");
    } else {
      m = mmap(nullptr, pages * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (m == MAP_FAILED) die("cannot map the working set: " + std::string(std::strerror(errno)));
    }
    auto* w = static_cast<std::uint64_t*>(m);
    for (std::uint64_t p = 0; p < pages; ++p) expect_sum += bench::fill_page(o.data, p, &w[p * kWordsPerPage]);
    auto access = [w](std::uint64_t page, std::uint64_t word) {
      std::uint64_t* x = &w[page * kWordsPerPage + word];
      *reinterpret_cast<volatile std::uint64_t*>(x) = *reinterpret_cast<volatile std::uint64_t*>(x) + 1;
    };
    // In hw mode uthreads park on a fault only with FARMEM_HW_FAULTS=signal.
    if (o.uthreads) farmem::uthread::start(o.threads);
    auto run = [&](std::uint64_t n, std::uint64_t seed) {
      Progress progress(seed == o.seed ? "measured" : "warm-up", n);
      return o.uthreads ? run_ops_uthreads(o, pages, n, seed, zipf.get(), access)
                        : run_ops(o, pages, n, seed, zipf.get(), access);
    };
    run(warm_ops, o.seed + 1000);
    farmem::reset_fault_histogram();
    before = farmem::stats();
    std::uint64_t f0 = kernel_faults(), s0 = vmstat("pswpout");
    seconds = run(o.ops, o.seed);
    after = farmem::stats();
    if (o.mode == "hw") hist = farmem::fault_histogram();
    if (o.uthreads) farmem::uthread::stop();
    if (o.mode == "hw") {
      faults = after.faults - before.faults;
      evictions = after.evictions - before.evictions;
      p50 = after.fault_p50_ns;
      p99 = after.fault_p99_ns;
    } else {
      faults = kernel_faults() - f0;
      evictions = vmstat("pswpout") - s0;
    }
    if (o.verify) {
      std::uint64_t sum = 0;
      for (std::uint64_t i = 0; i < words; ++i) sum += w[i];
      verified = sum == expect_sum;
      if (!verified) die("verification FAILED: sum of the working set is " + std::to_string(sum) +
                         ", expected " + std::to_string(expect_sum));
    }
    end = farmem::stats();  // after verifying: only for the resident/far lines
  }

  if (latency_out) write_latency_csv(latency_out, o, transport, 100.0 * local_mem / (pages * 4096), pages * 4096, hist);
  const double ops_per_sec = static_cast<double>(o.ops) / seconds;
  const double ns_per_op = seconds * 1e9 / static_cast<double>(o.ops);
  if (o.json) {
    std::printf(
        "{\"workload\":\"%s\",\"mode\":\"%s\",\"working_set_bytes\":%llu,\"local_mem_bytes\":%llu,"
        "\"threads\":%u,\"uthreads\":%u,\"ops\":%llu,\"seconds\":%.6f,\"ops_per_sec\":%.1f,\"ns_per_op\":%.1f,"
        "\"faults\":%llu,\"evictions\":%llu,\"fault_p50_ns\":%llu,\"fault_p99_ns\":%llu,"
        "\"writebacks\":%llu,\"bytes_in\":%llu,\"bytes_out\":%llu,\"alloc_stalls\":%llu,"
        "\"rescues\":%llu,\"verified\":%s%s}\n",
        o.workload.c_str(), o.mode.c_str(), (unsigned long long)(pages * 4096),
        (unsigned long long)local_mem, o.threads, o.uthreads, (unsigned long long)o.ops, seconds, ops_per_sec,
        ns_per_op, (unsigned long long)faults, (unsigned long long)evictions, (unsigned long long)p50,
        (unsigned long long)p99, (unsigned long long)(after.writebacks - before.writebacks),
        (unsigned long long)(after.bytes_in - before.bytes_in),
        (unsigned long long)(after.bytes_out - before.bytes_out),
        (unsigned long long)(after.alloc_stalls - before.alloc_stalls),
        (unsigned long long)(after.rescues - before.rescues), verified ? "true" : "false",
        o.mode == "hw" ? hw_breakdown(before, after).c_str() : "");
  } else {
    std::printf("workload %s, mode %s, working set %llu MiB, local memory %llu MiB, %u thread(s)\n",
                o.workload.c_str(), o.mode.c_str(), (unsigned long long)(pages * 4096 >> 20),
                (unsigned long long)(local_mem >> 20), o.threads);
    std::printf("  %llu ops in %.3f s: %.2f Mops/s, %.1f ns/op\n", (unsigned long long)o.ops,
                seconds, ops_per_sec / 1e6, ns_per_op);
    if (o.mode != "local") {
      std::printf("  faults %llu (p50 %llu ns, p99 %llu ns), evictions %llu, pages in %llu MiB, out %llu MiB\n",
                  (unsigned long long)faults, (unsigned long long)p50, (unsigned long long)p99,
                  (unsigned long long)evictions,
                  (unsigned long long)((after.bytes_in - before.bytes_in) >> 20),
                  (unsigned long long)((after.bytes_out - before.bytes_out) >> 20));
      std::printf("  local: %llu MiB resident of %llu MiB budget; far: %llu MiB on the memory server\n",
                  (unsigned long long)(end.resident_bytes >> 20),
                  (unsigned long long)(end.local_mem_bytes >> 20),
                  (unsigned long long)(end.far_bytes >> 20));
    } else {
      std::printf("  kernel page faults %llu, pages swapped out (system-wide) %llu\n",
                  (unsigned long long)faults, (unsigned long long)evictions);
    }
    std::printf("  verified: %s\n", o.verify ? (verified ? "yes" : "NO") : "skipped");
  }
  return 0;
}
