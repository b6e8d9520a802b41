// Live statistics (live_stats.hpp): the counter and row names, the per-process
// file (made, replaced under a seqlock, removed), reading it from another
// process, and the Prometheus text rendering of a snapshot.
//
// The writer runs on a runtime thread (the evictor), also under the preload
// shim: publish() only stores words, and mapping the file goes straight to the
// kernel (the shim interposes mmap).
#include "runtime/live_stats.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "runtime/os.hpp"

namespace farmem::live {

namespace {
void* kernel_mmap(void* addr, std::size_t len, int prot, int flags, int fd, off_t off) {
  long r = syscall(SYS_mmap, addr, len, prot, flags, fd, off);
  return r < 0 && r > -4096 ? MAP_FAILED : reinterpret_cast<void*>(r);
}
int kernel_munmap(void* addr, std::size_t len) { return static_cast<int>(syscall(SYS_munmap, addr, len)); }

bool read_small(const char* path, char* buf, std::size_t cap, std::size_t* n) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  ssize_t r = read(fd, buf, cap - 1);
  close(fd);
  if (r <= 0) return false;
  buf[r] = 0;
  *n = static_cast<std::size_t>(r);
  return true;
}
}  // namespace

const std::vector<CounterDef>& runtime_counters() {
  static const std::vector<CounterDef> defs = {
      {"faults", "Misses that needed a frame (zero fills + demand fetches)", false},
      {"zero_fills", "Faults on never-written pages, filled with zeros", false},
      {"fetches", "Pages read from the memory server on demand", false},
      {"prefetches", "Pages read ahead of a sequential miss", false},
      {"evictions", "Pages evicted (write-backs + clean drops)", false},
      {"writebacks", "Dirty pages written to the memory server", false},
      {"clean_drops", "Clean pages evicted without a write", false},
      {"rescues", "Pages taken back from the evictor before they left", false},
      {"alloc_stalls", "Faults that found no free frame and waited for the evictor", false},
      {"shootdowns", "Eviction batches (one TLB shootdown each)", false},
      {"bytes_in", "Bytes read from the memory server", false},
      {"bytes_out", "Bytes written to the memory server", false},
      {"local_mem_bytes", "Local memory budget", true},
      {"resident_bytes", "Frames of the budget in use", true},
      {"far_bytes", "Bytes held only by the memory server", true},
      {"fault_p50_ns", "Median fault latency (ns)", true},
      {"fault_p99_ns", "99th percentile fault latency (ns)", true},
      {"fault_max_ns", "Largest fault latency (ns, histogram bucket)", true},
      {"hw_faults", "Transparent-region faults filled", false},
      {"hw_first_write_faults", "First writes to clean transparent pages (FARMEM_HW_DIRTY=track)", false},
      {"hw_evicted", "Transparent-region pages evicted", false},
      {"far_connected", "1 once the memory server is started or connected", true},
      // Appended, so a farmem-stat of an older build still reads the ones above.
      {"hw_quick_refaults", "Transparent faults on pages that left fewer than a budget's worth of evictions before",
       false},
      {"hw_hot_passes", "Frames CLOCK passed over because their group came back quickly (FARMEM_HW_KEEP_HOT)", false},
      {"evictor_cpu_ms", "CPU time of the evictor thread (ms)", false},
      {"fault_handler_cpu_ms", "CPU time of the transparent-fault handler thread (ms)", false},
  };
  return defs;
}

const std::vector<CounterDef>& server_counters() {
  static const std::vector<CounterDef> defs = {
      {"listeners", "Listeners (--listen) this server runs", true},
      {"clients", "Client sessions open", true},
      {"granted_bytes", "Memory granted to sessions (written pages; rdma: whole sessions)", true},
      {"capacity_bytes", "--capacity", true},
  };
  return defs;
}

const std::vector<RowField>& row_fields(std::uint32_t kind) {
  static const std::vector<RowField> runtime = {
      {"far_bytes", "farmem_per_server_far_bytes", "Bytes of far pages (pieces) this memory server holds for us", true},
      {"written_bytes", "farmem_per_server_written_bytes_total", "Bytes written to this memory server", false},
      {"up", "farmem_per_server_up", "1 while this memory server takes pieces", true},
  };
  static const std::vector<RowField> server = {
      {"granted_bytes", "farmem_server_client_granted_bytes", "Memory granted to this client session", true},
      {"written_bytes", "farmem_server_client_written_bytes_total", "Bytes this client session wrote", false},
      {"read_bytes", "farmem_server_client_read_bytes_total", "Bytes this client session read", false},
  };
  return kind == kKindServer ? server : runtime;
}

void Row::set_label(const std::string& text) {
  const std::size_t n = std::min(text.size(), sizeof label - 1);
  std::memcpy(label, text.data(), n);
  label[n] = 0;
}

std::string Row::label_text() const { return std::string(label, strnlen(label, sizeof label)); }

void Snapshot::add_row(std::uint64_t id, const std::string& label, std::uint64_t v0, std::uint64_t v1,
                       std::uint64_t v2) {
  if (nrows >= kMaxRows) {
    ++rows_dropped;
    return;
  }
  Row& r = rows[nrows++];
  r.id = id;
  r.v[0] = v0;
  r.v[1] = v1;
  r.v[2] = v2;
  r.set_label(label);
}

void Snapshot::set_info(const std::string& json) {
  info_len = std::min<std::size_t>(json.size(), kInfoBytes);
  std::memcpy(info, json.data(), info_len);
}

std::uint64_t start_ticks(pid_t pid) {
  char path[64], buf[1024];
  std::snprintf(path, sizeof path, "/proc/%d/stat", static_cast<int>(pid));
  std::size_t n = 0;
  if (!read_small(path, buf, sizeof buf, &n)) return 0;
  const char* p = std::strrchr(buf, ')');  // the name may hold spaces and parentheses
  if (p == nullptr) return 0;
  ++p;
  for (int field = 2; field < 22 && *p; ++p)  // p moves to the start of field 22
    if (*p == ' ') ++field;
  return std::strtoull(p, nullptr, 10);
}

std::string dir_from_env() {
  const char* d = getenv("FARMEM_STATS_DIR");
  return d && *d ? std::string(d) : std::string(kDefaultDir);
}

std::unique_ptr<Publisher> Publisher::create(const std::string& dir, std::uint32_t kind, std::string* err) {
  err->clear();
  if (dir == "off") return nullptr;
  auto fail = [&](const char* what, const std::string& path) {
    *err = std::string("cannot ") + what + " " + path + ": " + detail::errno_text(errno);
    return nullptr;
  };
  // Made by whoever comes first, for every user (like /tmp: sticky, so each removes only its own).
  if (mkdir(dir.c_str(), 01777) == 0) chmod(dir.c_str(), 01777);
  else if (errno != EEXIST) return fail("create the statistics directory", dir);
  const pid_t pid = getpid();
  const std::string path = dir + "/" + std::to_string(pid);
  const std::string tmp = dir + "/." + std::to_string(pid) + ".new";
  int fd = open(tmp.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return fail("write statistics in", dir);
  if (ftruncate(fd, sizeof(Page)) != 0) {
    close(fd);
    unlink(tmp.c_str());
    return fail("size", tmp);
  }
  void* m = kernel_mmap(nullptr, sizeof(Page), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  close(fd);
  if (m == MAP_FAILED) {
    unlink(tmp.c_str());
    return fail("map", tmp);
  }
  // A forked child gets no copy: it must never write its parent's page.
  detail::kernel_madvise(m, sizeof(Page), MADV_DONTFORK);
  std::unique_ptr<Publisher> pub(new Publisher);
  pub->page_ = static_cast<Page*>(m);
  pub->path_ = path;
  pub->pid_ = pid;
  Header& h = pub->page_->h;
  h.version = kVersion;
  h.kind = kind;
  h.pid = pid;
  h.start_ticks = start_ticks(pid);
  h.started_ns = detail::now_ns();
  char comm[64];
  std::size_t n = 0;
  if (read_small("/proc/self/comm", comm, sizeof comm, &n)) {
    if (n && comm[n - 1] == '\n') comm[--n] = 0;
    std::memcpy(h.name, comm, std::min(n, sizeof h.name - 1));
  }
  std::memcpy(h.magic, kMagic, sizeof kMagic);
  // Appears whole under its name; replaces the file an earlier image of this pid left (exec).
  if (rename(tmp.c_str(), path.c_str()) != 0) {
    unlink(tmp.c_str());
    return fail("publish", path);
  }
  return pub;
}

Publisher::~Publisher() {
  if (page_) kernel_munmap(page_, sizeof(Page));
}

void Publisher::publish() {
  const std::uint64_t s = page_->seq.load(std::memory_order_relaxed);
  page_->seq.store(s + 1, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_release);
  std::uint64_t w[sizeof(Snapshot) / 8];
  std::memcpy(w, &next_, sizeof w);
  const std::size_t used = (offsetof(Snapshot, info) + next_.info_len + 7) / 8;  // skip the unused text
  for (std::size_t i = 0; i < used; ++i) page_->words[i].store(w[i], std::memory_order_relaxed);
  page_->seq.store(s + 2, std::memory_order_release);
}

void Publisher::remove() {
  if (page_ && getpid() == pid_) unlink(path_.c_str());
}

void read_page(const Page& p, Reading* out) {
  out->h = p.h;
  std::uint64_t w[sizeof(Snapshot) / 8];
  for (;;) {
    const std::uint64_t s1 = p.seq.load(std::memory_order_acquire);
    if (s1 & 1) {
      sched_yield();
      continue;
    }
    for (std::size_t i = 0; i < sizeof w / 8; ++i) w[i] = p.words[i].load(std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_acquire);
    if (p.seq.load(std::memory_order_relaxed) == s1) break;
  }
  std::memcpy(&out->s, w, sizeof w);
  if (out->s.info_len > kInfoBytes) out->s.info_len = 0;
  if (out->s.nrows > kMaxRows) out->s.nrows = 0;
}

bool read_file(const std::string& dir, pid_t pid, Reading* out, std::string* err) {
  const std::string path = dir + "/" + std::to_string(pid);
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    *err = errno == ENOENT ? "not found" : std::string("cannot open ") + path + ": " + detail::errno_text(errno);
    return false;
  }
  struct stat st {};
  if (fstat(fd, &st) != 0 || st.st_size != static_cast<off_t>(sizeof(Page))) {
    close(fd);
    *err = path + " is not a farmem statistics file of this version (farmem-stat and the process differ?)";
    return false;
  }
  void* m = mmap(nullptr, sizeof(Page), PROT_READ, MAP_SHARED, fd, 0);
  close(fd);
  if (m == MAP_FAILED) {
    *err = std::string("cannot map ") + path + ": " + detail::errno_text(errno);
    return false;
  }
  const Page* p = static_cast<const Page*>(m);
  bool ok = false;
  if (std::memcmp(p->h.magic, kMagic, sizeof kMagic) != 0 || p->h.version != kVersion) {
    *err = path + " is not a farmem statistics file of this version (farmem-stat and the process differ?)";
  } else if (p->h.pid != pid || start_ticks(pid) != p->h.start_ticks) {
    *err = "stale";
    unlink(path.c_str());  // its process is gone (killed before it could remove it)
  } else {
    read_page(*p, out);
    ok = true;
  }
  munmap(m, sizeof(Page));
  return ok;
}

std::vector<pid_t> list(const std::string& dir) {
  std::vector<pid_t> pids;
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return pids;
  while (dirent* e = readdir(d)) {
    char* end = nullptr;
    long pid = std::strtol(e->d_name, &end, 10);
    if (*e->d_name == 0 || *end != 0 || pid <= 0) continue;
    Reading r;
    std::string err;
    if (read_file(dir, static_cast<pid_t>(pid), &r, &err)) pids.push_back(static_cast<pid_t>(pid));
  }
  closedir(d);
  std::sort(pids.begin(), pids.end());
  return pids;
}

namespace {
void append_u64(std::string& s, std::uint64_t v) {
  char b[24];
  int n = 0;
  do b[n++] = static_cast<char>('0' + v % 10);
  while ((v /= 10) != 0);
  while (n) s += b[--n];
}
// ns as seconds with nine decimals, without printf (no locale: this runs under the shim too).
void append_seconds(std::string& s, std::uint64_t ns) {
  append_u64(s, ns / 1000000000);
  std::string frac;
  append_u64(frac, ns % 1000000000);
  s += '.';
  s.append(9 - frac.size(), '0');
  s += frac;
}
// A label value: backslash, double quote and newline escaped.
void append_label(std::string& s, const std::string& v) {
  for (char c : v) {
    if (c == '\\' || c == '"') s += '\\';
    if (c == '\n') s += "\\n";
    else s += c;
  }
}
}  // namespace

std::string prometheus(const Reading& r) {
  std::string out;
  out.reserve(8192);
  const bool server = r.h.kind == kKindServer;
  const std::string prefix = server ? "farmem_server_" : "farmem_";
  const auto& defs = counters_of(r.h.kind);
  for (std::size_t i = 0; i < defs.size() && i < kMaxCounters; ++i) {
    const std::string name = prefix + defs[i].name + (defs[i].gauge ? "" : "_total");
    out += "# HELP " + name + " " + defs[i].help + "\n# TYPE " + name + (defs[i].gauge ? " gauge\n" : " counter\n");
    out += name + " ";
    append_u64(out, r.s.counters[i]);
    out += "\n";
  }
  if (!server) {
    // Log-linear buckets (8 per power of two) summed into power-of-two bounds, in seconds.
    const std::string h = "farmem_fault_latency_seconds";
    out += "# HELP " + h + " Fault latency (software faults and transparent-region faults)\n# TYPE " + h +
           " histogram\n";
    std::uint64_t cum = 0, sum_ns = 0;
    for (unsigned k = 0; k < kHistBuckets / 8; ++k) {
      for (unsigned b = k == 0 ? 0 : 8 * k; b < 8 * (k + 1) && b < kHistBuckets; ++b) {
        cum += r.s.hist[b];
        // bucket b holds values from its lower bound to the next one's
        const std::uint64_t lo = b < 8 ? b : (std::uint64_t{8} | (b & 7)) << (b / 8 - 3);
        sum_ns += r.s.hist[b] * lo;
      }
      if (k < 8 || k > 34) continue;  // bounds from 256 ns to 16 s
      out += h + "_bucket{le=\"";
      append_seconds(out, std::uint64_t{1} << k);
      out += "\"} ";
      append_u64(out, cum);
      out += "\n";
    }
    out += h + "_bucket{le=\"+Inf\"} ";
    append_u64(out, cum);
    out += "\n" + h + "_count ";
    append_u64(out, cum);
    out += "\n" + h + "_sum ";
    append_seconds(out, sum_ns);
    out += "\n";
  }
  // The row table: one series per memory server (runtime) or client session (server).
  const auto& fields = row_fields(r.h.kind);
  for (std::size_t f = 0; f < fields.size() && r.s.nrows > 0; ++f) {
    const std::string name = fields[f].metric;
    out += "# HELP " + name + " " + fields[f].help + "\n# TYPE " + name + (fields[f].gauge ? " gauge\n" : " counter\n");
    for (std::size_t i = 0; i < r.s.nrows && i < kMaxRows; ++i) {
      const Row& row = r.s.rows[i];
      out += name;
      if (server) {
        out += "{session=\"";
        append_u64(out, row.id);
        out += "\",client=\"";
      } else {
        out += "{server=\"";
      }
      append_label(out, row.label_text());
      out += "\"} ";
      append_u64(out, row.v[f]);
      out += "\n";
    }
  }
  const std::string up = prefix + "uptime_seconds";
  out += "# HELP " + up + " Seconds since the process started publishing statistics\n# TYPE " + up + " gauge\n" +
         up + " ";
  append_seconds(out, r.s.updated_ns > r.h.started_ns ? r.s.updated_ns - r.h.started_ns : 0);
  out += "\n";
  return out;
}

}  // namespace farmem::live
