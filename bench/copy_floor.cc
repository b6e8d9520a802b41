// farmem-copy-floor: what moving one 4 KiB page costs on this machine, with the
// mechanisms farmem's shm transport could use, measured against a memory-server
// stand-in (a forked child holding THP-backed memory). It gives the floor under
// farmem's per-op numbers: at 25% local, uniform access misses on 3 ops in 4,
// and every miss moves one page in (the fault) and one page out (the evictor).
//
//   memcpy        cold random page -> random frame, in one process (any copy's floor)
//   readv_1       process_vm_readv, one random page a call (a blocking fault)
//   readv_64      process_vm_readv, 64 random pages a call (uthreads' batched misses)
//   writev_64     process_vm_writev, 64 random pages a call (the evictor's write-back)
//   writev_64c    process_vm_writev, 64 pages to one contiguous remote range
// and the kernel page-table work the transparent path (farmem-run) makes:
//   first_touch   a write to a never-used anonymous page (the kernel's fault)
//   uffd_copy_1   UFFDIO_COPY of one page into a userfaultfd-registered range
//   zap_1         MADV_DONTNEED of one page (a TLB shootdown)
//   uffd_fault_thread  one userfaultfd fault served by a handler thread with
//                 UFFDIO_COPY (the shim's mode): trap, message, copy, wake-up
//   uffd_fault_spin    the same, the handler thread polling without sleeping
//   uffd_fault_sigbus  the same fault in SIGBUS mode, served in the handler
// The two faults are the floor of a transparent miss before any byte is
// fetched or any page evicted: no design of the user-space path goes below it.
// These moved most between days on this VM (docs/benchmarks.md); -1 where
// userfaultfd cannot be opened.
//
// Prints one JSON object: the median ns per page of each, over --repeat rounds.
#include <linux/userfaultfd.h>
#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/prctl.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <poll.h>
#include <pthread.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "farmem/runtime.hpp"

namespace {

constexpr std::size_t kPage = 4096;
constexpr int kBatch = 64;

[[noreturn]] void die(const std::string& msg) {
  std::fprintf(stderr, "farmem-copy-floor: %s\n", msg.c_str());
  std::exit(2);
}

char* map_anon(std::size_t bytes) {
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) die("cannot map " + std::to_string(bytes >> 20) + " MiB; use a smaller --store");
  madvise(p, bytes, MADV_HUGEPAGE);
  std::memset(p, 1, bytes);
  return static_cast<char*>(p);
}

double ns_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count();
}

struct Bench {
  pid_t server;
  char* store;  // the child's copy (same address in both processes)
  std::size_t store_pages;
  char* pool;  // local frames, a quarter of the store
  std::size_t pool_pages;
  std::mt19937_64 rng{42};

  char* frame() { return pool + (rng() % pool_pages) * kPage; }
  char* slot() { return store + (rng() % store_pages) * kPage; }

  double memcpy_ns(long pages) {
    // The store is mapped in this process too (fork), so copy from it directly.
    auto t0 = std::chrono::steady_clock::now();
    for (long i = 0; i < pages; ++i) std::memcpy(frame(), slot(), kPage);
    return ns_since(t0) / pages;
  }
  double readv_1_ns(long pages) {
    auto t0 = std::chrono::steady_clock::now();
    for (long i = 0; i < pages; ++i) {
      iovec l{frame(), kPage}, r{slot(), kPage};
      if (process_vm_readv(server, &l, 1, &r, 1, 0) != static_cast<ssize_t>(kPage)) die("process_vm_readv failed");
    }
    return ns_since(t0) / pages;
  }
  double batch_ns(long pages, bool write, bool contiguous) {
    iovec l[kBatch], r[kBatch];
    long calls = std::max(1L, pages / kBatch);
    auto t0 = std::chrono::steady_clock::now();
    for (long c = 0; c < calls; ++c) {
      char* base = store + (rng() % (store_pages - kBatch)) * kPage;
      for (int k = 0; k < kBatch; ++k) {
        l[k] = {frame(), kPage};
        r[k] = {contiguous ? base + k * kPage : slot(), kPage};
      }
      int nr = kBatch;
      if (contiguous) r[0].iov_len = kBatch * kPage, nr = 1;
      ssize_t n = write ? process_vm_writev(server, l, kBatch, r, nr, 0) : process_vm_readv(server, l, kBatch, r, nr, 0);
      if (n != static_cast<ssize_t>(kBatch * kPage)) die("process_vm_readv/writev failed");
    }
    return ns_since(t0) / (calls * kBatch);
  }
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Page-table operations on `n` pages of a fresh anonymous range, in random
// order: out[0] first touch, out[1] UFFDIO_COPY (-1 without userfaultfd),
// out[2] MADV_DONTNEED of one page. ns per page.
void page_table_ns(long n, double* out) {
  const std::size_t bytes = static_cast<std::size_t>(n) * kPage;
  char* r = static_cast<char*>(mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  if (r == MAP_FAILED) die("cannot map the page-table test range");
  madvise(r, bytes, MADV_NOHUGEPAGE);
  std::vector<long> order(n);
  for (long i = 0; i < n; ++i) order[i] = i;
  std::shuffle(order.begin(), order.end(), std::mt19937_64(7));
  auto t0 = std::chrono::steady_clock::now();
  for (long i : order) r[i * kPage] = 1;
  out[0] = ns_since(t0) / n;
  t0 = std::chrono::steady_clock::now();
  for (long i : order) madvise(r + i * kPage, kPage, MADV_DONTNEED);
  out[2] = ns_since(t0) / n;
  out[1] = -1;
  const int fd = static_cast<int>(syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK));
  uffdio_api api{UFFD_API, 0, 0};
  uffdio_register reg{{reinterpret_cast<std::uint64_t>(r), bytes}, UFFDIO_REGISTER_MODE_MISSING, 0};
  if (fd >= 0 && ioctl(fd, UFFDIO_API, &api) == 0 && ioctl(fd, UFFDIO_REGISTER, &reg) == 0) {
    alignas(4096) static char src[kPage];
    std::memset(src, 3, kPage);
    t0 = std::chrono::steady_clock::now();
    for (long i : order) {
      uffdio_copy c{reinterpret_cast<std::uint64_t>(r + i * kPage), reinterpret_cast<std::uint64_t>(src), kPage, 0, 0};
      if (ioctl(fd, UFFDIO_COPY, &c) != 0) die("UFFDIO_COPY failed");
    }
    out[1] = ns_since(t0) / n;
  }
  if (fd >= 0) close(fd);
  munmap(r, bytes);
}


// One uffd fault at a time on `n` missing pages in random order, served with
// UFFDIO_COPY of one page: by a handler thread blocked in poll()
// (mode Thread), by one that reads without sleeping (Spin) or by a SIGBUS
// handler in the faulting thread (Sigbus). ns per fault,
// -1 where userfaultfd or its SIGBUS feature cannot be had.
int g_sigbus_uffd = -1;
alignas(4096) char g_fill[kPage];

void on_sigbus(int, siginfo_t* si, void*) {
  const auto a = reinterpret_cast<std::uint64_t>(si->si_addr) & ~std::uint64_t{kPage - 1};
  uffdio_copy c{a, reinterpret_cast<std::uint64_t>(g_fill), kPage, 0, 0};
  if (ioctl(g_sigbus_uffd, UFFDIO_COPY, &c) != 0 && errno != EEXIST) _exit(3);
}

enum class Serve { Thread, Spin, Sigbus };

double uffd_fault_ns(long n, Serve how) {
  const bool sigbus = how == Serve::Sigbus;
  const int fd = static_cast<int>(syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK));
  if (fd < 0) return -1;
  uffdio_api api{UFFD_API, sigbus ? static_cast<std::uint64_t>(UFFD_FEATURE_SIGBUS) : 0, 0};
  const std::size_t bytes = static_cast<std::size_t>(n) * kPage;
  char* r = static_cast<char*>(mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  if (r == MAP_FAILED) die("cannot map the fault test range");
  madvise(r, bytes, MADV_NOHUGEPAGE);
  uffdio_register reg{{reinterpret_cast<std::uint64_t>(r), bytes}, UFFDIO_REGISTER_MODE_MISSING, 0};
  if (ioctl(fd, UFFDIO_API, &api) != 0 || ioctl(fd, UFFDIO_REGISTER, &reg) != 0) {
    close(fd);
    munmap(r, bytes);
    return -1;
  }
  std::memset(g_fill, 5, kPage);
  std::vector<long> order(n);
  for (long i = 0; i < n; ++i) order[i] = i;
  std::shuffle(order.begin(), order.end(), std::mt19937_64(11));
  struct sigaction sa{}, old{};
  std::thread handler;
  int stop[2] = {-1, -1};
  if (sigbus) {
    g_sigbus_uffd = fd;
    sa.sa_sigaction = on_sigbus;
    sa.sa_flags = SA_SIGINFO;
    sigaction(SIGBUS, &sa, &old);
  } else {
    if (pipe(stop) != 0) die("pipe failed");
    handler = std::thread([fd, rd = stop[0], spin = how == Serve::Spin] {
      pollfd p[2] = {{fd, POLLIN, 0}, {rd, POLLIN, 0}};
      for (;;) {
        if (poll(p, 2, spin ? 0 : -1) < 0) continue;
        if (p[1].revents) return;
        uffd_msg m;
        while (read(fd, &m, sizeof m) == sizeof m) {
          if (m.event != UFFD_EVENT_PAGEFAULT) continue;
          const std::uint64_t a = m.arg.pagefault.address & ~std::uint64_t{kPage - 1};
          uffdio_copy c{a, reinterpret_cast<std::uint64_t>(g_fill), kPage, 0, 0};
          if (ioctl(fd, UFFDIO_COPY, &c) != 0 && errno != EEXIST) die("UFFDIO_COPY failed in the handler");
        }
      }
    });
  }
  volatile char sink = 0;
  auto t0 = std::chrono::steady_clock::now();
  for (long i : order) sink = sink + r[i * kPage];
  const double ns = ns_since(t0) / n;
  if (sigbus) {
    sigaction(SIGBUS, &old, nullptr);
  } else {
    (void)!write(stop[1], "x", 1);
    handler.join();
    close(stop[0]);
    close(stop[1]);
  }
  close(fd);
  munmap(r, bytes);
  return ns;
}

}  // namespace

int main(int argc, char** argv) {
  std::uint64_t store_bytes = 1ull << 30;
  long pages = 100000;
  int repeat = 3;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) die(a + " needs a value; see --help");
      return argv[++i];
    };
    try {
      if (a == "--store") store_bytes = farmem::parse_size(value(), "--store");
      else if (a == "--pages") pages = std::stol(value());
      else if (a == "--repeat") repeat = std::stoi(value());
      else if (a == "--help" || a == "-h") {
        std::puts("usage: farmem-copy-floor [--store SIZE (1G)] [--pages N (100000)] [--repeat N (3)]");
        return 0;
      } else die("unknown option " + a + "; see --help");
    } catch (const farmem::Error& e) {
      die(e.what());
    } catch (const std::exception&) {
      die("bad number for " + a + "; give a positive integer");
    }
  }
  if (store_bytes < 64 * kPage * 4) die("--store must be at least 1M");
  if (pages < kBatch || repeat < 1) die("--pages must be at least 64 and --repeat at least 1");

  Bench b{};
  b.store_pages = store_bytes / kPage;
  b.store = map_anon(store_bytes);
  int ready[2];
  if (pipe(ready) != 0) die("pipe failed");
  b.server = fork();
  if (b.server < 0) die("fork failed");
  if (b.server == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    std::memset(b.store, 2, store_bytes);  // its own pages now, not the parent's
    char c = 1;
    (void)!write(ready[1], &c, 1);
    for (;;) pause();
  }
  char c;
  if (read(ready[0], &c, 1) != 1) die("the memory-server stand-in died");
  b.pool_pages = b.store_pages / 4;
  b.pool = map_anon(b.pool_pages * kPage);

  std::vector<double> r[11];
  for (int k = 0; k < repeat; ++k) {
    double pt[3];
    page_table_ns(std::min<long>(pages, 16384), pt);
    for (int j = 0; j < 3; ++j) r[5 + j].push_back(pt[j]);
    r[8].push_back(uffd_fault_ns(std::min<long>(pages, 16384), Serve::Thread));
    r[9].push_back(uffd_fault_ns(std::min<long>(pages, 16384), Serve::Sigbus));
    r[10].push_back(uffd_fault_ns(std::min<long>(pages, 16384), Serve::Spin));
    r[0].push_back(b.memcpy_ns(pages));
    r[1].push_back(b.readv_1_ns(pages));
    r[2].push_back(b.batch_ns(pages, false, false));
    r[3].push_back(b.batch_ns(pages, true, false));
    r[4].push_back(b.batch_ns(pages, true, true));
  }
  kill(b.server, SIGKILL);
  waitpid(b.server, nullptr, 0);
  std::printf(
      "{\"store_bytes\":%llu,\"pages\":%ld,\"repeat\":%d,\"memcpy_ns\":%.1f,\"readv_1_ns\":%.1f,"
      "\"readv_64_ns\":%.1f,\"writev_64_ns\":%.1f,\"writev_64c_ns\":%.1f,\"first_touch_ns\":%.1f,"
      "\"uffd_copy_1_ns\":%.1f,\"zap_1_ns\":%.1f,\"uffd_fault_thread_ns\":%.1f,\"uffd_fault_sigbus_ns\":%.1f,"
      "\"uffd_fault_spin_ns\":%.1f}\n",
      static_cast<unsigned long long>(store_bytes), pages, repeat, median(r[0]), median(r[1]), median(r[2]),
      median(r[3]), median(r[4]), median(r[5]), median(r[6]), median(r[7]), median(r[8]),
      median(r[9]), median(r[10]));
  return 0;
}
