// Live statistics: the page every farmem process (a program using the runtime,
// a farmem-run child, a farmem-server) publishes in FARMEM_STATS_DIR (default
// /dev/shm/farmem/<pid>) while it runs, so farmem-stat and the metrics
// endpoint read its counters without stopping it or asking it anything.
//
// The file holds a fixed header, written once before the file appears under
// its name, and a snapshot that one writer thread replaces under a seqlock:
// counters by index (names in runtime_counters()/server_counters(), the same
// as FARMEM_STATS), the fault-latency histogram, a table of rows (a runtime:
// one per memory server it uses; a server: one per client session), and a
// short JSON text with the settings and transports in use.
#pragma once
#include <sys/types.h>

#include <atomic>
#include <memory>
#include <cstdint>
#include <string>
#include <vector>

namespace farmem::live {

constexpr char kMagic[8] = {'F', 'A', 'R', 'M', 'E', 'M', 'S', '1'};
constexpr std::uint32_t kVersion = 2;  // 2: the row table
constexpr std::uint32_t kKindRuntime = 1, kKindServer = 2;
constexpr unsigned kMaxCounters = 48;
constexpr unsigned kHistBuckets = 512;  // detail::CoreStats::kHistBuckets (log-linear, ns)
constexpr unsigned kInfoBytes = 4096;
constexpr unsigned kMaxRows = 64;
constexpr const char* kDefaultDir = "/dev/shm/farmem";
constexpr std::uint64_t kPeriodNs = 200'000'000;  // how often a process refreshes its page

struct CounterDef {
  const char* name;  // as in FARMEM_STATS (farmem-stat --json) and, prefixed, as a Prometheus metric
  const char* help;
  bool gauge;        // a level (resident bytes), not a count that only grows
};
const std::vector<CounterDef>& runtime_counters();
const std::vector<CounterDef>& server_counters();
inline const std::vector<CounterDef>& counters_of(std::uint32_t kind) {
  return kind == kKindServer ? server_counters() : runtime_counters();
}

// One row of the table: a memory server a runtime uses, or a client session
// of a server. Its values are named by row_fields(kind).
struct Row {
  std::uint64_t id = 0;  // a runtime: the pool slot (0 for one server); a server: the session number
  std::uint64_t v[3] = {};
  char label[96] = {};   // a runtime: the server's URI; a server: the client's address
  void set_label(const std::string& text);
  std::string label_text() const;
};
static_assert(sizeof(Row) == 128);

struct RowField {
  const char* name;    // farmem-stat --json key
  const char* metric;  // the Prometheus metric (counters end in _total)
  const char* help;
  bool gauge;
};
// A runtime's rows: far_bytes, written_bytes, up (per memory server).
// A server's rows: granted_bytes, written_bytes, read_bytes (per client session).
const std::vector<RowField>& row_fields(std::uint32_t kind);

// What the writer replaces as a whole; plain data, a multiple of 8 bytes.
struct Snapshot {
  std::uint64_t updated_ns = 0;  // CLOCK_MONOTONIC (the same clock in every process)
  std::uint64_t counters[kMaxCounters] = {};
  std::uint64_t hist[kHistBuckets] = {};  // runtime only: fault latency, log-linear ns buckets
  std::uint64_t nrows = 0;                // rows in use
  std::uint64_t rows_dropped = 0;         // rows that did not fit (more than kMaxRows)
  Row rows[kMaxRows];
  std::uint64_t info_len = 0;
  char info[kInfoBytes] = {};             // a JSON object: settings, transports
  void set_info(const std::string& json);
  std::string info_text() const { return std::string(info, info_len); }
  // Adds a row (counted in rows_dropped when the table is full).
  void add_row(std::uint64_t id, const std::string& label, std::uint64_t v0, std::uint64_t v1, std::uint64_t v2);
};
static_assert(sizeof(Snapshot) % 8 == 0);

struct Header {
  char magic[8];
  std::uint32_t version, kind;
  std::int64_t pid;
  std::uint64_t start_ticks;  // field 22 of /proc/PID/stat: tells this process from a later one with its pid
  std::uint64_t started_ns;   // CLOCK_MONOTONIC at start
  char name[32];              // the program (comm)
};

struct Page {
  Header h;
  std::atomic<std::uint64_t> seq;  // odd while the writer replaces the snapshot
  std::atomic<std::uint64_t> words[sizeof(Snapshot) / 8];
};

// Start time of process pid in clock ticks since boot (0: no such process).
std::uint64_t start_ticks(pid_t pid);

// The writer side: one file per process. Only one thread calls publish().
class Publisher {
 public:
  // Creates DIR/<pid> (DIR made if missing). Returns null, with why in *err,
  // when the directory cannot be used; dir "off" publishes nothing (null, err empty).
  static std::unique_ptr<Publisher> create(const std::string& dir, std::uint32_t kind, std::string* err);
  ~Publisher();
  Snapshot& next() { return next_; }  // fill, then publish()
  void publish();
  // Removes the file (only in the process that created it: not in a forked child).
  void remove();
  const std::string& path() const { return path_; }
  const Page* page() const { return page_; }

 private:
  Publisher() = default;
  Page* page_ = nullptr;
  std::string path_;
  pid_t pid_ = 0;
  Snapshot next_;
};

// The reader side.
struct Reading {
  Header h{};
  Snapshot s;
};
// Copies a consistent snapshot out of a page (retries while the writer is mid-way).
void read_page(const Page& p, Reading* out);
// Reads DIR/<pid>. Errors: "not found" (no file), "stale" (the process is gone
// or the pid was reused: the file is removed), or why the file is unusable.
bool read_file(const std::string& dir, pid_t pid, Reading* out, std::string* err);
// Pids with a file in DIR whose process still runs (files of gone ones are removed).
std::vector<pid_t> list(const std::string& dir);
// FARMEM_STATS_DIR, or the default.
std::string dir_from_env();

// Snapshot -> Prometheus text exposition (metric names: docs/observability.md).
std::string prometheus(const Reading& r);

}  // namespace farmem::live
