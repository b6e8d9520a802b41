// The pool transport: its member servers and how they come and go. A member
// is lost when a request to it fails or it is silent for FARMEM_SERVER_TIMEOUT;
// the servers named in FARMEM_BACKEND (a comma list, or @FILE with one URI a
// line, re-read when it changes) are watched once a second: a new one joins,
// one that came back joins as new (empty), one no longer named retires after
// its pieces are moved. Reads and writes are in pool_qp.cc, repair in repair.cc.
#include "tier/pool.hpp"

#include <sys/mman.h>
#include <sys/stat.h>
#include <sched.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <fstream>

#include "runtime/fatal.hpp"
#include "runtime/os.hpp"
#include "runtime/runtime.hpp"
#include "tier/compressed.hpp"
#include "tier/protected.hpp"
#include "tier/pool_impl.hpp"

namespace farmem::tier {
namespace impl {
namespace {

std::string trim(std::string u) {
  while (!u.empty() && (u.front() == ' ' || u.front() == '\t' || u.front() == '\r')) u.erase(0, 1);
  while (!u.empty() && (u.back() == ' ' || u.back() == '\t' || u.back() == '\r')) u.pop_back();
  return u;
}

std::vector<std::string> split_uris(const std::string& list) {
  std::vector<std::string> out;
  for (std::size_t start = 0;;) {
    const std::size_t comma = list.find(',', start);
    out.push_back(trim(list.substr(start, comma == std::string::npos ? std::string::npos : comma - start)));
    if (comma == std::string::npos) return out;
    start = comma + 1;
  }
}

template <class T>
T* map_table(std::uint64_t n) {
  T* t = detail::map_table<T>(n);
  if (t == nullptr) throw Error("cannot map the pool's page table (" + std::to_string(n * sizeof(T) >> 20) + " MiB)");
  return t;
}

std::int64_t file_stamp(const std::string& path) {
  struct stat st{};
  if (stat(path.c_str(), &st) != 0) return -1;
  return static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec + st.st_size;
}

}  // namespace

// The servers the pool should have: the comma list, or the pool file's lines
// (blank lines and # comments skipped). Throws Error naming the problem.
std::vector<std::string> Pool::listed() const {
  const std::string where = pool_file_.empty() ? "FARMEM_BACKEND" : "the pool file " + pool_file_;
  std::vector<std::string> uris;
  if (pool_file_.empty()) {
    uris = split_uris(cfg_.backend);
    for (const std::string& u : uris)
      if (u.empty()) throw Error("FARMEM_BACKEND='" + cfg_.backend + "' has an empty entry; separate URIs with one comma");
  } else {
    std::ifstream f(pool_file_);
    if (!f) throw Error("cannot read " + where + ": " + farmem::detail::errno_text(errno) + "; fix FARMEM_BACKEND=@FILE");
    for (std::string line; std::getline(f, line);) {
      line = trim(line.substr(0, line.find('#')));
      if (!line.empty()) uris.push_back(line);
    }
    if (uris.empty()) throw Error(where + " names no server; put one tcp://HOST:PORT a line");
  }
  if (uris.size() > kMaxServers)
    throw Error(where + " names " + std::to_string(uris.size()) + " servers; a pool takes at most 15");
  for (const std::string& u : uris)
    if (std::string no = net::member_refusal(u); !no.empty()) throw Error(where + ": " + no);
  return uris;
}

Pool::Pool(const Config& cfg)
    : scheme(parse_scheme(cfg.redundancy)), spare_read(cfg.ec_spare_read && scheme.k > 1), cfg_(cfg) {
  if (!cfg.backend.empty() && cfg.backend[0] == '@') {
    pool_file_ = cfg.backend.substr(1);
    if (pool_file_.empty()) throw Error("FARMEM_BACKEND=@ names no pool file; write @/path/to/pool.txt");
    file_stamp_ = file_stamp(pool_file_);
  }
  const std::vector<std::string> uris = listed();
  if (scheme.pieces() > uris.size())
    throw Error("FARMEM_REDUNDANCY=" + scheme.name() + " puts each page on " + std::to_string(scheme.pieces()) +
                " servers but " + (pool_file_.empty() ? "FARMEM_BACKEND" : "the pool file") + " names " +
                std::to_string(uris.size()) + "; add servers or lower the redundancy");
  const std::uint64_t far = cfg.far_mem_bytes ? cfg.far_mem_bytes : 64ull << 30;
  npages = far / kPage;
  opt_.capacity = npages * scheme.piece_bytes();  // a server holds at most one piece of each page
  opt_.timeout_ns = (cfg.server_timeout_ms ? cfg.server_timeout_ms : 5000) * 1000000ull;
  for (const std::string& u : uris) {
    opt_.uri = u;
    adopt(slots_.load(), u, connect(opt_));  // throws naming the server
  }
  last_retry_ns_ = farmem::detail::now_ns();
  loc = map_table<std::atomic<std::uint64_t>>(npages);
  sums = map_table<std::atomic<std::uint32_t>>(npages);
  repair_ = std::thread([this] { repair_loop(); });
  membership_ = std::thread([this] { membership_loop(); });
}

// One server, with its pieces compressed if FARMEM_COMPRESS asks (tier/compressed.cc,
// which also seals them) or sealed if only FARMEM_PROTECT does (tier/protected.cc).
std::unique_ptr<net::Transport> Pool::connect(const net::MemberOptions& opt) {
  const std::size_t piece = scheme.piece_bytes();
  return protect_member(cfg_, compress_member(cfg_, opt.uri, net::connect_member(cfg_, opt), piece), piece);
}

void Pool::membership_loop() {
  farmem::detail::g_internal_alloc = 1;  // under the shim: never allocate from the region
  for (;;) {
    {
      std::unique_lock<std::mutex> g(mu_);
      if (cv_.wait_for(g, std::chrono::seconds(1), [&] { return stop_; })) return;
    }
    reconcile();
  }
}

Pool::~Pool() {
  shutdown();
  munmap(loc, npages * sizeof *loc);
  munmap(sums, npages * sizeof *sums);
}

void Pool::shutdown() {
  {
    std::lock_guard<std::mutex> g(mu_);
    if (stop_) return;
    stop_ = true;
  }
  cv_.notify_all();
  if (repair_.joinable()) repair_.join();
  if (membership_.joinable()) membership_.join();
  std::lock_guard<std::mutex> g(mu_);
  for (auto& t : transports_) t->shutdown();
}

std::unique_ptr<net::QueuePair> Pool::create_qp() { return std::make_unique<PoolQueuePair>(*this); }

std::uint64_t Pool::own(std::uint64_t page) {
  for (unsigned spins = 0;; ++spins) {
    std::uint64_t w = loc[page].load(std::memory_order_acquire);
    if (!(w & kBusy) && loc[page].compare_exchange_weak(w, w | kBusy, std::memory_order_acq_rel)) return w;
    if (spins > 64) sched_yield();
  }
}

void Pool::discard(std::uint64_t off, std::uint64_t len) {
  const std::uint64_t first = off / kPage, end = std::min(npages, (off + len) / kPage);
  for (std::uint64_t p = first; p < end; ++p) {
    const std::uint64_t w = own(p);
    if (w) pieces_moved(w, 0);
    loc[p].store(0, std::memory_order_release);
  }
  const std::uint32_t readable = readable_mask();
  for (unsigned s = 0, n = slots(); s < n; ++s)
    if (readable & (1u << s))
      members_[s].t.load()->discard(first * scheme.piece_bytes(), (end - first) * scheme.piece_bytes());
}

std::uint64_t Pool::remote_usage() {
  std::uint64_t sum = 0;
  const std::uint32_t readable = readable_mask();
  for (unsigned s = 0, n = slots(); s < n; ++s)
    if (readable & (1u << s)) sum += members_[s].t.load()->remote_usage();
  return sum;
}

std::string Pool::uri_of(unsigned s) const {
  std::lock_guard<std::mutex> g(mu_);
  return uris_[s];
}

// Marks slot s down if it still holds the server generation `gen` that failed.
void Pool::server_failed(unsigned s, std::uint32_t gen) {
  Member& m = members_[s];
  if (m.gen.load(std::memory_order_acquire) != gen) return;  // the slot has a new server since
  State st = m.state.load(std::memory_order_acquire);
  do {
    if (st == State::Down || st == State::Empty) return;
  } while (!m.state.compare_exchange_weak(st, State::Down, std::memory_order_acq_rel));
  m.t.load()->shutdown();  // its control connection: a server that was only stopped frees our session
  const unsigned up = static_cast<unsigned>(__builtin_popcount(up_mask()));
  std::string uri;
  {
    std::lock_guard<std::mutex> g(mu_);
    uri = uris_[s];
    down_seq_[s] = ++failures_;
    ++repair_wanted_;
  }
  cv_.notify_all();
  std::fprintf(stderr,
               "farmem: memory server %s is down (connection lost, or no answer within %llu ms); %u up, %s\n",
               uri.c_str(), static_cast<unsigned long long>(opt_.timeout_ns / 1000000), up,
               up >= scheme.pieces() ? "rebuilding its pieces on the others" : "running with less redundancy");
}

void Pool::pages_lost(std::uint64_t page, std::uint64_t w) {
  std::string down;
  {
    std::lock_guard<std::mutex> g(mu_);
    for (unsigned s = 0, n = slots(); s < n; ++s)
      if (members_[s].state.load() == State::Down && !members_[s].clear.load())
        down += (down.empty() ? "" : ", ") + uris_[s];
  }
  farmem::detail::fatal("far memory lost: memory servers %s are down, more than %s covers (far page %llu%s); "
                        "restart the application with the servers back",
                        down.empty() ? "(none)" : down.c_str(), scheme.name().c_str(),
                        static_cast<unsigned long long>(page),
                        w ? " had too few pieces left" : " cannot be written");
}

// Puts a connected server into slot s, up (under mu_, or while constructing):
// a new generation, so queue pairs open new connections to it.
void Pool::adopt(unsigned s, const std::string& uri, std::unique_ptr<net::Transport> t) {
  transports_.push_back(std::move(t));
  uris_[s] = uri;
  members_[s].t.store(transports_.back().get(), std::memory_order_release);
  members_[s].clear.store(false);
  members_[s].written_bytes.store(0, std::memory_order_relaxed);  // a new server in the slot
  members_[s].gen.fetch_add(1, std::memory_order_acq_rel);
  members_[s].state.store(State::Up, std::memory_order_release);
  if (s >= slots_.load()) slots_.store(s + 1, std::memory_order_release);
}

// Connects `uri` into an empty slot, or a down one no page has a piece in.
bool Pool::add_server(const std::string& uri) {
  unsigned s = kMaxServers;
  for (unsigned i = 0; i < kMaxServers && s == kMaxServers; ++i) {
    const State st = members_[i].state.load();
    if (st == State::Empty || (st == State::Down && members_[i].clear.load())) s = i;
  }
  if (s == kMaxServers) {
    std::fprintf(stderr, "farmem: cannot add memory server %s: all 15 pool slots hold servers or pieces of lost ones\n",
                 uri.c_str());
    return false;
  }
  net::MemberOptions opt = opt_;
  opt.uri = uri;
  std::unique_ptr<net::Transport> t;
  try {
    t = connect(opt);
  } catch (const Error& e) {
    return false;  // not there (yet): tried again in a few seconds
  }
  unsigned up;
  {
    std::lock_guard<std::mutex> g(mu_);
    adopt(s, uri, std::move(t));
    ++repair_wanted_;  // pages written with too few servers can now be completed
    up = static_cast<unsigned>(__builtin_popcount(up_mask()));
  }
  cv_.notify_all();
  joined.fetch_add(1, std::memory_order_relaxed);
  std::fprintf(stderr, "farmem: memory server %s joined the pool (%u up)\n", uri.c_str(), up);
  return true;
}

// Once a second (membership thread): brings the members in line with the servers
// listed, when the pool file changed, and every few seconds to retry listed
// servers that are not up (one that came back joins as new: its old pieces
// were rebuilt elsewhere or are lost to us anyway).
void Pool::reconcile() {
  const std::uint64_t now = farmem::detail::now_ns();
  const std::int64_t stamp = pool_file_.empty() ? 0 : file_stamp(pool_file_);
  const bool changed = !pool_file_.empty() && stamp != file_stamp_;
  const bool retry = now - last_retry_ns_ > 5000000000ull;
  if (!changed && !retry) return;
  if (retry) last_retry_ns_ = now;
  std::vector<std::string> uris;
  try {
    uris = listed();
  } catch (const Error& e) {
    if (changed) std::fprintf(stderr, "farmem: %s; the pool keeps its servers\n", e.what());
    file_stamp_ = stamp;
    return;
  }
  file_stamp_ = stamp;
  auto is_listed = [&](const std::string& u) { return std::find(uris.begin(), uris.end(), u) != uris.end(); };
  std::vector<std::string> missing;
  {
    std::lock_guard<std::mutex> g(mu_);
    for (unsigned s = 0, n = slots(); s < n; ++s) {
      Member& m = members_[s];
      const State st = m.state.load();
      if (st == State::Up && !is_listed(uris_[s])) {
        m.state.store(State::Retiring, std::memory_order_release);
        down_seq_[s] = ++failures_;
        ++repair_wanted_;
        std::fprintf(stderr, "farmem: memory server %s is leaving the pool; moving its pieces to the others\n",
                     uris_[s].c_str());
        cv_.notify_all();
      } else if (st == State::Retiring && is_listed(uris_[s])) {
        m.state.store(State::Up, std::memory_order_release);
      }
    }
    for (const std::string& u : uris) {
      bool have = false;
      for (unsigned s = 0, n = slots(); s < n && !have; ++s) {
        const State st = members_[s].state.load();
        have = (st == State::Up || st == State::Retiring) && uris_[s] == u;
      }
      if (!have) missing.push_back(u);
    }
  }
  for (const std::string& u : missing) add_server(u);
}

// After a scan that left every page with all its pieces on up servers: no page
// has a piece on the servers lost before it began; retiring ones are gone.
void Pool::after_repair_scan(bool restored, std::uint64_t seq_at_start) {
  if (!restored) return;
  std::lock_guard<std::mutex> g(mu_);
  for (unsigned s = 0, n = slots(); s < n; ++s) {
    Member& m = members_[s];
    if (down_seq_[s] == 0 || down_seq_[s] > seq_at_start) continue;
    if (m.state.load() == State::Retiring) {
      m.state.store(State::Down, std::memory_order_release);
      m.t.load()->shutdown();
      retired.fetch_add(1, std::memory_order_relaxed);
      std::fprintf(stderr, "farmem: memory server %s left the pool\n", uris_[s].c_str());
    }
    if (m.state.load() == State::Down) m.clear.store(true, std::memory_order_release);
  }
}

std::string Pool::describe() const {
  std::lock_guard<std::mutex> g(mu_);
  std::string d = "pool (" + scheme.name() + "):";
  static const char* const kState[] = {"", "", " (retiring)", " (down)"};
  for (unsigned s = 0, n = slots(); s < n; ++s)
    if (members_[s].state.load() != State::Empty)
      d += " " + uris_[s] + kState[static_cast<int>(members_[s].state.load())];
  return d;
}

std::vector<net::ServerBytes> Pool::per_server() const {
  std::vector<net::ServerBytes> v;
  std::lock_guard<std::mutex> g(mu_);
  for (unsigned s = 0, n = slots(); s < n; ++s) {
    const Member& m = members_[s];
    const State st = m.state.load(std::memory_order_acquire);
    if (st == State::Empty) continue;
    net::ServerBytes b;
    b.slot = s;
    b.uri = uris_[s];
    b.far_bytes = m.held_pieces.load(std::memory_order_relaxed) * scheme.piece_bytes();
    b.written_bytes = m.written_bytes.load(std::memory_order_relaxed);
    b.up = st == State::Up;
    v.push_back(std::move(b));
  }
  return v;
}

std::string Pool::stats_json() const {
  unsigned up = 0, down = 0, retiring = 0;
  for (unsigned s = 0, n = slots(); s < n; ++s) {
    const State st = members_[s].state.load();
    up += st == State::Up;
    down += st == State::Down;
    retiring += st == State::Retiring;
  }
  bool running, restored;
  std::uint64_t last, total_ms;
  {
    std::lock_guard<std::mutex> g(mu_);
    running = repair_running_ || repair_wanted_ > 0;
    restored = !running && restored_;
    last = last_repair_ms_;
    total_ms = repair_ns_ / 1000000;
  }
  auto u = [](const std::atomic<std::uint64_t>& a) { return std::to_string(a.load()); };
  // What the servers hold for us (asked over each one's control connection).
  const std::uint64_t used = const_cast<Pool*>(this)->remote_usage();
  return "\"pool\":{\"servers_up\":" + std::to_string(up) + ",\"servers_down\":" + std::to_string(down) +
         ",\"servers_retiring\":" + std::to_string(retiring) + ",\"servers_joined\":" + u(joined) +
         ",\"servers_retired\":" + u(retired) + ",\"server_used_bytes\":" + std::to_string(used) +
         ",\"redundancy\":\"" + scheme.name() + "\",\"pieces_written\":" + u(pieces_written) +
         ",\"pieces_read\":" + u(pieces_read) + ",\"bytes_out\":" + u(bytes_out) + ",\"bytes_in\":" + u(bytes_in) +
         ",\"degraded_reads\":" + u(degraded_reads) + ",\"spare_wins\":" + u(spare_wins) + ",\"checksum_retries\":" + u(checksum_retries) +
         ",\"degraded_writes\":" + u(degraded_writes) + ",\"pages_repaired\":" + u(repaired_pages) +
         ",\"repair_running\":" + (running ? "true" : "false") +
         ",\"redundancy_restored\":" + (restored ? "true" : "false") + ",\"last_repair_ms\":" + std::to_string(last) +
         ",\"repair_ms\":" + std::to_string(total_ms) + "}" + members_json();
}

// What each live server's own layers report (FARMEM_COMPRESS: its pieces'
// sizes), as "members":[{"server":URI,...}], or "" when none reports anything.
std::string Pool::members_json() const {
  std::string out;
  for (unsigned s = 0, n = slots(); s < n; ++s) {
    if (members_[s].state.load() != State::Up) continue;
    const std::string j = members_[s].t.load()->stats_json();
    if (j.empty()) continue;
    if (!out.empty()) out += ',';
    out += "{\"server\":\"";
    out += uri_of(s);
    out += "\",";
    out += j;
    out += '}';
  }
  return out.empty() ? "" : ",\"members\":[" + out + "]";
}

}  // namespace impl

bool names_pool(const std::string& backend) {
  if (backend.rfind("redis+cluster://", 0) == 0) return false;  // its commas list one cluster's nodes
  return backend.find(',') != std::string::npos || (!backend.empty() && backend[0] == '@');
}

bool is_pool(const Config& cfg) {
  return names_pool(cfg.backend) || (cfg.redundancy != "none" && !cfg.redundancy.empty());
}

std::unique_ptr<net::Transport> connect_pool(const Config& cfg) { return std::make_unique<impl::Pool>(cfg); }

}  // namespace farmem::tier
