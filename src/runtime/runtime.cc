// Runtime bootstrap and teardown: validates the configuration, maps the page
// table and the frame pool, starts the memory server and the evictor, and stops
// them at exit (printing statistics when FARMEM_STATS=1).
#include "runtime/runtime.hpp"

#include <fcntl.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>

#include "evict/evictor.hpp"
#include "hw/region.hpp"
#include "runtime/fatal.hpp"
#include "runtime/live_stats.hpp"
#include "runtime/metrics.hpp"
#include "tier/compressed.hpp"
#include "tier/page_seal.hpp"
#include "tier/pool.hpp"

namespace farmem {
namespace detail {

std::atomic<Runtime*> g_runtime_ptr{nullptr};
__thread int g_internal_alloc __attribute__((tls_model("initial-exec"))) = 0;

namespace {
std::mutex g_init_mu;
bool g_shut_down = false;

constexpr std::uint64_t kMinLocalMem = 8ull << 20;
constexpr std::uint64_t kDefaultFarMem = 64ull << 30;
constexpr std::uint64_t kHuge = 2ull << 20;

void* map_region(std::uint64_t bytes, bool populate, const char* what) {
  int flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE;
  void* p = mmap(nullptr, bytes + kHuge, PROT_READ | PROT_WRITE, flags, -1, 0);
  if (p == MAP_FAILED)
    throw Error(std::string("cannot map ") + what + " (" + std::to_string(bytes >> 20) +
                " MiB): " + std::strerror(errno) + "; lower FARMEM_LOCAL_MEM or FARMEM_FAR_MEM");
  char* a = reinterpret_cast<char*>((reinterpret_cast<std::uintptr_t>(p) + kHuge - 1) & ~(kHuge - 1));
  if (populate) {
    kernel_madvise(a, bytes, MADV_HUGEPAGE);
    // Fault the frame pool in now, so the fault path never pays a kernel fault.
    if (kernel_madvise(a, bytes, MADV_POPULATE_WRITE) != 0)
      for (std::uint64_t off = 0; off < bytes; off += 4096) a[off] = 0;
  }
  return a;
}

// The alignment slack map_region() left around [p, p+bytes) stays mapped: it
// was never touched, so it holds no memory.
void unmap_region(void* p, std::uint64_t bytes) {
  if (p != nullptr) munmap(p, bytes);
}

// FARMEM_STATS=1 goes to a copy of stderr taken at start: programs (coreutils,
// for one) close stderr in their own exit handlers, which run before ours.
int g_stats_fd = -1;

// Under farmem-run (FARMEM_RUN_PID: the program's pid, kept through exec) the
// program's own process reports, and so does any other process of its tree
// that sent pages far; the shells and tools of a wrapper chain stay quiet.
void print_stats(Runtime& r) {
  if (!r.cfg.stats_at_exit || r.forked_child) return;
  const char* run_pid = getenv("FARMEM_RUN_PID");
  const bool is_program = run_pid != nullptr && std::strtol(run_pid, nullptr, 10) == getpid();
  if (run_pid != nullptr && !is_program && !r.transport->connected()) return;
  std::string line = farmem::stats_json() + "\n";
  if (is_program) {
    rusage ru{};
    getrusage(RUSAGE_SELF, &ru);
    line += "farmem-run: peak resident " + std::to_string(ru.ru_maxrss >> 10) + " MiB, local memory budget " +
            std::to_string(r.cfg.local_mem_bytes >> 20) + " MiB\n";
  }
  if (write(g_stats_fd >= 0 ? g_stats_fd : 2, line.data(), line.size()) < 0) {
  }
}

void at_exit() {
  Runtime* r = g_runtime_ptr.load();
  if (r != nullptr && r->cfg.keep_running_at_exit) {
    print_stats(*r);
    if (r->live) r->live->remove();  // the evictor may still write the page; nobody reads it now
    return;  // the memory server exits when our socket closes
  }
  farmem::shutdown();
}

// fork(): the page table must be at rest while the process is copied, and the
// child must be able to read what is far right now. The handler and the evictor
// park (in-flight batches finish), the memory server forks a snapshot for the
// child, and the child serves its transparent pages from it (hw/fork.cc).
Runtime* g_forking = nullptr;

void fork_prepare() {
  Runtime* r = g_runtime_ptr.load(std::memory_order_acquire);
  g_init_mu.lock();
  if (r == nullptr || g_shut_down) {
    g_forking = nullptr;
    return;
  }
  g_forking = r;
  InternalAlloc internal;
  hw::Region* region = r->hw.load(std::memory_order_acquire);
  if (region) region->fork_prepare();
  r->evictor->pause();
  r->fork_snapshot = r->transport->fork_prepare();
}

void fork_parent() {
  if (Runtime* r = g_forking) {
    r->transport->fork_parent();
    r->evictor->resume();
    if (hw::Region* region = r->hw.load(std::memory_order_acquire)) region->fork_parent();
  }
  g_init_mu.unlock();
}

void fork_child() {
  if (Runtime* r = g_forking) {
    InternalAlloc internal;
    r->forked_child = true;
    r->transport->fork_child();
    r->evictor->forget_thread();
    if (r->metrics) r->metrics->forget_in_child();
    if (hw::Region* region = r->hw.load(std::memory_order_acquire)) region->fork_child();
  }
  g_init_mu.unlock();
}

// Live statistics and FARMEM_METRICS. Under farmem-run only the program's own
// process (FARMEM_RUN_PID) serves metrics; every process publishes its page.
void start_observers(Runtime& rt) {
  const Config& cfg = rt.cfg;
  std::string err;
  rt.live = live::Publisher::create(cfg.stats_dir.empty() ? live::kDefaultDir : cfg.stats_dir, live::kKindRuntime,
                                    &err);
  if (!rt.live && !err.empty() && !cfg.stats_dir.empty())
    throw Error("FARMEM_STATS_DIR=" + cfg.stats_dir + ": " + err +
                "; point it at a writable directory or set FARMEM_STATS_DIR=off");
  const char* run_pid = getenv("FARMEM_RUN_PID");
  if (!cfg.metrics.empty() && (run_pid == nullptr || std::strtol(run_pid, nullptr, 10) == getpid())) {
    Runtime* r = &rt;
    rt.metrics = std::make_unique<metrics::Server>(cfg.metrics, [r] {
      live::Reading rd;
      rd.h.kind = live::kKindRuntime;
      rd.h.started_ns = r->started_ns;
      collect_live(*r, rd.s, false);
      return live::prometheus(rd);
    });
  }
  if (rt.live) {  // the first snapshot; the evictor refreshes it from now on
    collect_live(rt, rt.live->next(), true);
    rt.live->publish();
  }
}

}  // namespace

void Runtime::kick_evictor() {
  if (evictor_sleeping.load(std::memory_order_seq_cst)) {
    kick_word.fetch_add(1, std::memory_order_seq_cst);
    futex_wake(&kick_word);
  }
}

void fatal(const char* fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  std::fprintf(stderr, "farmem: %s\n", buf);
  std::fflush(stderr);
  _exit(1);
}

Runtime& runtime() {
  if (Runtime* r = g_runtime_ptr.load(std::memory_order_acquire)) return *r;
  {
    std::lock_guard<std::mutex> g(g_init_mu);
    if (g_shut_down) fatal("far memory used after farmem::shutdown()");
  }
  try {
    farmem::init(Config::from_env());
  } catch (const Error& e) {
    if (g_runtime_ptr.load() == nullptr) {  // else another thread won the race to init
      std::fprintf(stderr, "farmem: %s\n", e.what());
      std::exit(1);
    }
  }
  return *g_runtime_ptr.load(std::memory_order_acquire);
}

}  // namespace detail

void check_config(Config& cfg) {
  using namespace detail;
  const std::uint64_t phys = physical_memory_bytes();
  if (cfg.local_mem_bytes == 0) cfg.local_mem_bytes = phys / 4;
  if (cfg.far_mem_bytes == 0) cfg.far_mem_bytes = kDefaultFarMem;
  auto mib = [](std::uint64_t b) { return std::to_string(b >> 20) + " MiB"; };
  if (std::string no = tier::compress_refusal(cfg); !no.empty()) throw Error(no);  // also names a bad codec
  tier::parse_protect(cfg.protect);  // names a bad value
  if (cfg.local_mem_bytes > phys)
    throw Error("local memory budget " + mib(cfg.local_mem_bytes) +
                " exceeds this machine's physical memory (" + mib(phys) +
                "); lower " + cfg.local_mem_from);
  if (cfg.local_mem_bytes < kMinLocalMem)
    throw Error("local memory budget " + std::to_string(cfg.local_mem_bytes) +
                " bytes is below the minimum of 8 MiB the runtime needs; raise " + cfg.local_mem_from);
  if (cfg.far_mem_bytes < (16ull << 20) || cfg.far_mem_bytes > (1ull << 46))
    throw Error("far memory size " + mib(cfg.far_mem_bytes) +
                " is out of range; set FARMEM_FAR_MEM between 16M and 64T");
  if (cfg.backend.empty()) cfg.backend = "shm";
  // A pool's members are checked when it connects.
  if (!tier::names_pool(cfg.backend) && !net::names_backend(cfg.backend))
    throw Error("FARMEM_BACKEND=" + cfg.backend + " is not a backend; use " + net::backend_forms() +
                ", or several URIs separated by commas or @FILE (a pool)");
}

detail::Runtime::~Runtime() {
  using namespace detail;
  metrics.reset();  // its thread reads the runtime
  evictor.reset();
  if (live) live->remove();
  live.reset();
  transport.reset();  // stops a memory server it started
  delete[] cores;
  unmap_region(pt, far_pages * sizeof(std::uint64_t));
  unmap_region(pool, std::uint64_t{nframes} * kPageSize);
  unmap_region(slot_full, std::uint64_t{nframes} + 1);
  unmap_region(owner, (std::uint64_t{nframes} + 1) * sizeof(std::uint64_t));
}

void init(const Config& in) {
  using namespace detail;
  InternalAlloc internal;
  std::lock_guard<std::mutex> g(g_init_mu);
  if (g_runtime_ptr.load() != nullptr)
    throw Error("farmem::init called twice; call it once, before the first far allocation");
  Config cfg = in;
  check_config(cfg);
  auto rt = std::make_unique<Runtime>();
  rt->cfg = cfg;
  rt->far_pages = (cfg.far_mem_bytes + kPageSize - 1) / kPageSize;
  rt->nframes = static_cast<std::uint32_t>(cfg.local_mem_bytes / kPageSize);
  rt->pt = static_cast<std::atomic<std::uint64_t>*>(
      map_region(rt->far_pages * sizeof(std::uint64_t), false, "the page table"));
  rt->pool = static_cast<char*>(
      map_region(std::uint64_t{rt->nframes} * kPageSize, cfg.populate_pool, "the frame pool"));
  rt->slot_full = static_cast<std::atomic<std::uint8_t>*>(
      map_region(std::uint64_t{rt->nframes} + 1, false, "the frame map"));
  if (cfg.populate_pool) std::memset(static_cast<void*>(rt->slot_full), 1, std::uint64_t{rt->nframes} + 1);
  rt->owner = static_cast<std::atomic<std::uint64_t>*>(
      map_region((std::uint64_t{rt->nframes} + 1) * sizeof(std::uint64_t), false, "the frame map"));
  rt->cores = new Core[kMaxCores];
  rt->transport = net::connect(cfg);  // starts the memory server; throws Error
  rt->exclusive_loads = rt->transport->drops_copy_on_read();
  rt->transport->register_local(rt->pool, std::uint64_t{rt->nframes} * kPageSize);  // rdma: the MR for the pool
  rt->far.reset(1, rt->far_pages);   // far page 0 is the null far pointer
  rt->started_ns = now_ns();
  start_observers(*rt);  // throws Error (FARMEM_STATS_DIR, FARMEM_METRICS)
  Runtime* r = rt.release();
  g_runtime_ptr.store(r, std::memory_order_release);
  r->evictor = std::make_unique<evict::Evictor>(*r);
  r->evictor->start();
  if (r->metrics) r->metrics->start();
  static bool registered = false;
  if (!registered) {
    registered = true;
    std::atexit(at_exit);
    if (cfg.stats_at_exit) g_stats_fd = fcntl(2, F_DUPFD_CLOEXEC, 3);
    pthread_atfork(fork_prepare, fork_parent, fork_child);
  }
}

bool initialized() { return detail::g_runtime_ptr.load() != nullptr; }

void check_backend(const Config& cfg) { net::probe(cfg); }

void shutdown() {
  using namespace detail;
  std::lock_guard<std::mutex> g(g_init_mu);
  Runtime* r = g_runtime_ptr.load();
  if (r == nullptr || g_shut_down) return;
  g_shut_down = true;
  print_stats(*r);
  r->metrics.reset();
  r->evictor->stop();
  if (r->live) r->live->remove();
  r->transport->shutdown();
  // The runtime's memory stays mapped: other threads may still hold far pointers.
}

std::uint64_t far_alloc(std::size_t bytes) {
  detail::Runtime& rt = detail::runtime();
  std::uint64_t pages = (bytes + detail::kPageSize - 1) / detail::kPageSize;
  std::uint64_t first = rt.far.alloc(pages ? pages : 1);
  if (first == 0)
    throw Error("far memory exhausted allocating " + std::to_string(bytes >> 20) + " MiB (" +
                std::to_string(rt.far.allocated_pages() * detail::kPageSize >> 20) + " of " +
                std::to_string(rt.cfg.far_mem_bytes >> 20) + " MiB in use); raise FARMEM_FAR_MEM");
  return first << detail::kPageShift;
}

void far_free(std::uint64_t addr, std::size_t bytes) {
  if (addr == 0) return;
  detail::Runtime& rt = detail::current();
  std::uint64_t pages = (bytes + detail::kPageSize - 1) / detail::kPageSize;
  rt.evictor->free_range(addr >> detail::kPageShift, pages ? pages : 1);
}

}  // namespace farmem
