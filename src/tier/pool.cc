// The pool transport. A page's K+M pieces go to the first K+M live servers of
// its rendezvous ranking, at offset page * piece size on each (one piece of a
// page per server). Where they went is kept per page, so a server's loss or a
// change of ranking never sends a read to a server without the piece:
//   location word (8 bytes a page): 4 bits a piece, server number + 1, 0 = none;
//                                   bit 63 set while a write or a repair owns it
//   checksum (4 bytes a page):      CRC-32C of the page as written
// 12 bytes a page: 3 MiB per GiB of far memory, touched only where pages went far.
//
// A write completes (and the evictor may reuse the frame) when every piece is
// on a live server; a piece whose server fails is written to another. A read
// takes the K data pieces straight into the frame when their servers are up, or
// any K pieces and decodes; every page read back is checked against its CRC.
// A lost server is repaired in the background: each page with a piece there is
// read, decoded and written again over the live servers.
#include "tier/pool.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "farmem/runtime.hpp"
#include "runtime/fatal.hpp"
#include "runtime/os.hpp"
#include "runtime/runtime.hpp"
#include "tier/placement.hpp"
#include "tier/redundancy.hpp"
#include "transport/tcp/tcp_transport.hpp"

namespace farmem::tier {
namespace {

constexpr std::uint64_t kBusy = 1ull << 63;
constexpr std::size_t kPage = 4096;

unsigned piece_server(std::uint64_t w, unsigned piece) { return static_cast<unsigned>((w >> (4 * piece)) & 0xf); }
std::uint64_t with_piece(std::uint64_t w, unsigned piece, unsigned server_plus_1) {
  return (w & ~(0xfull << (4 * piece))) | (std::uint64_t{server_plus_1} << (4 * piece));
}

std::vector<std::string> split_uris(const std::string& list) {
  std::vector<std::string> out;
  std::size_t start = 0;
  for (;;) {
    std::size_t comma = list.find(',', start);
    std::string u = list.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    while (!u.empty() && (u.front() == ' ' || u.front() == '\t')) u.erase(0, 1);
    while (!u.empty() && (u.back() == ' ' || u.back() == '\t')) u.pop_back();
    out.push_back(u);
    if (comma == std::string::npos) return out;
    start = comma + 1;
  }
}

template <class T>
T* map_table(std::uint64_t n) {
  void* p = mmap(nullptr, n * sizeof(T), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) throw Error("cannot map the pool's page table (" + std::to_string(n * sizeof(T) >> 20) + " MiB)");
  return static_cast<T*>(p);
}

class PoolQueuePair;

class Pool final : public net::Transport {
 public:
  explicit Pool(const Config& cfg);
  ~Pool() override {
    shutdown();
    munmap(loc, npages * sizeof *loc);
    munmap(sums, npages * sizeof *sums);
  }

  std::unique_ptr<net::QueuePair> create_qp() override;
  void discard(std::uint64_t off, std::uint64_t len) override;
  std::uint64_t remote_usage() override {
    std::uint64_t sum = 0;
    for (auto& m : members_)
      if (!m.down.load()) sum += m.t->remote_usage();
    return sum;
  }
  void shutdown() override;
  std::string describe() const override;
  std::string stats_json() const override;

  // Shared state, used by the queue pairs.
  const Scheme scheme;
  const unsigned n;
  std::uint64_t npages;
  std::atomic<std::uint64_t>* loc;
  std::atomic<std::uint32_t>* sums;

  struct Member {
    std::string uri;
    std::unique_ptr<net::Transport> t;
    std::atomic<bool> down{false};
  };
  Member& member(unsigned s) { return members_[s]; }
  std::uint32_t live_mask() const {
    std::uint32_t m = 0;
    for (unsigned s = 0; s < n; ++s)
      if (!members_[s].down.load(std::memory_order_acquire)) m |= 1u << s;
    return m;
  }
  void server_failed(unsigned s);
  [[noreturn]] void pages_lost(std::uint64_t page, std::uint64_t w);
  // Takes a page's location word for a write (waits while a repair holds it).
  std::uint64_t own(std::uint64_t page);
  void note_written(std::uint64_t page) {
    std::uint64_t hi = high_page_.load(std::memory_order_relaxed);
    while (page + 1 > hi && !high_page_.compare_exchange_weak(hi, page + 1)) {
    }
  }

  std::atomic<std::uint64_t> pieces_written{0}, pieces_read{0}, bytes_out{0}, bytes_in{0}, degraded_reads{0},
      degraded_writes{0}, checksum_retries{0}, repaired_pages{0};

 private:
  void repair_loop();
  bool claim_for_repair(std::uint64_t page, bool* stuck);

  std::deque<Member> members_;
  std::uint64_t timeout_ms_ = 0;
  std::atomic<std::uint64_t> high_page_{0};
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  unsigned repair_wanted_ = 0;   // failures not yet repaired
  bool repair_running_ = false;  // a scan is under way
  bool restored_ = true;         // the last scan left every page with all its pieces
  std::uint64_t last_repair_ms_ = 0;
  std::thread repair_;
};

// One thread's queue pair over the pool: a member queue pair per server, made
// when first used, and a table of operations in flight. A member completion's
// cookie is op index * 16 + piece.
class PoolQueuePair final : public net::QueuePair {
 public:
  explicit PoolQueuePair(Pool& p) : p_(p), codec_(p.scheme), qps_(p.n) {}

  void post_read(std::uint64_t off, void* local, std::size_t len, std::uint64_t cookie) override;
  void post_write(std::uint64_t off, const void* local, std::size_t len, std::uint64_t cookie) override;
  // A repair: `page` (owned by the caller, its location word `w`) was read into
  // local; its pieces on lost servers go to live servers that hold none of its
  // pieces. The pieces in place are never overwritten, so a read that started
  // from the old location word stays right.
  void post_repair(std::uint64_t page, std::uint64_t w, const void* local, std::uint64_t cookie);
  void submit() override {
    for (unsigned s = 0; s < p_.n; ++s)
      if (dirty_ & (1u << s)) qps_[s]->submit();
    dirty_ = 0;
  }
  std::size_t poll(net::Completion* out, std::size_t max) override;
  void wait(unsigned timeout_us) override {
    if (!ready_.empty()) return;
    for (unsigned s = 0; s < p_.n; ++s)
      if (qps_[s] && inflight_[s]) return qps_[s]->wait(timeout_us);
  }
  bool idle() const { return active_ == 0 && ready_.empty(); }

 private:
  struct Op {
    bool used = false, write = false;
    std::uint64_t cookie = 0, page = 0;
    unsigned char* local = nullptr;
    std::uint64_t loc = 0;          // write: the word being built; read: the word read from
    std::uint32_t outstanding = 0;  // pieces in flight
    std::uint32_t got = 0;          // pieces done (write) or arrived (read)
    std::uint32_t tried = 0;        // read: pieces asked for so far, or failed
    std::uint32_t servers_used = 0; // write: servers holding a piece of this write
    bool into_scratch = false;      // read: pieces go to the scratch buffer to be decoded
    std::uint32_t direct = 0;       // read: pieces sent straight into the frame
    unsigned attempts = 0;
    std::uint32_t sum = 0;
    std::vector<unsigned char> scratch;  // (k+m) pieces: parity to send, or pieces to decode
  };

  unsigned new_op();
  unsigned start_write(std::uint64_t page, const void* local, std::uint64_t cookie);
  net::QueuePair& qp(unsigned s) {
    if (!qps_[s]) qps_[s] = p_.member(s).t->create_qp();
    return *qps_[s];
  }
  void send_piece(unsigned op, unsigned piece, unsigned server, bool write);
  bool place_piece(unsigned op, unsigned piece);
  void plan_read(unsigned op);
  void finish(unsigned op, bool failed = false);
  void on_piece(unsigned op, unsigned piece, unsigned server, bool failed);
  void read_done(unsigned op);
  void abandon(unsigned s);

  Pool& p_;
  Codec codec_;
  std::vector<std::unique_ptr<net::QueuePair>> qps_;
  std::uint32_t inflight_[kMaxServers] = {};
  std::uint32_t dirty_ = 0;
  std::vector<Op> ops_;
  std::vector<unsigned> free_;
  unsigned active_ = 0;
  std::deque<net::Completion> ready_;
  std::vector<unsigned char> sent_piece_server_;  // op * 16 + piece -> server + 1 in flight
};

unsigned PoolQueuePair::new_op() {
  unsigned i;
  if (!free_.empty()) {
    i = free_.back();
    free_.pop_back();
  } else {
    i = static_cast<unsigned>(ops_.size());
    ops_.emplace_back();
    ops_.back().scratch.resize(p_.scheme.pieces() * p_.scheme.piece_bytes());
    sent_piece_server_.resize(ops_.size() * 16);
  }
  Op& o = ops_[i];
  o.used = true;
  o.outstanding = o.got = o.tried = o.servers_used = o.direct = 0;
  o.into_scratch = false;
  o.attempts = 0;
  ++active_;
  return i;
}

void PoolQueuePair::send_piece(unsigned op, unsigned piece, unsigned server, bool write) {
  Op& o = ops_[op];
  const std::size_t pb = p_.scheme.piece_bytes();
  const std::uint64_t remote = o.page * pb;
  const std::uint64_t cookie = std::uint64_t{op} * 16 + piece;
  sent_piece_server_[op * 16 + piece] = static_cast<unsigned char>(server + 1);
  ++o.outstanding;
  ++inflight_[server];
  dirty_ |= 1u << server;
  if (write) {
    // Data pieces come from the page itself; parity (or a replica's copy of the
    // page) from the scratch buffer encode() filled.
    const unsigned char* src = piece < p_.scheme.k ? o.local + piece * pb
                               : p_.scheme.k == 1 ? o.local
                                                  : o.scratch.data() + (piece - p_.scheme.k) * pb;
    qp(server).post_write(remote, src, pb, cookie);
    p_.pieces_written.fetch_add(1, std::memory_order_relaxed);
    p_.bytes_out.fetch_add(pb, std::memory_order_relaxed);
  } else {
    // Copies (k = 1) are whole pages: any one goes straight into the frame.
    unsigned char* dst = p_.scheme.k == 1 ? o.local
                         : o.into_scratch ? o.scratch.data() + piece * pb
                                          : o.local + piece * pb;
    if (!o.into_scratch) o.direct |= 1u << piece;
    qp(server).post_read(remote, dst, pb, cookie);
    p_.pieces_read.fetch_add(1, std::memory_order_relaxed);
    p_.bytes_in.fetch_add(pb, std::memory_order_relaxed);
  }
}

// Sends a write's piece to the best live server not holding a piece of this
// write; false if there is none left.
bool PoolQueuePair::place_piece(unsigned op, unsigned piece) {
  Op& o = ops_[op];
  unsigned order[kMaxServers];
  const unsigned n = rank_servers(o.page, p_.n, p_.live_mask() & ~o.servers_used, order);
  if (n == 0) return false;
  o.servers_used |= 1u << order[0];
  send_piece(op, piece, order[0], true);
  return true;
}

void PoolQueuePair::post_write(std::uint64_t off, const void* local, std::size_t len, std::uint64_t cookie) {
  if (len != kPage || off % kPage) detail::fatal("the pool writes whole pages (asked %zu bytes at %llu)", len,
                                                 static_cast<unsigned long long>(off));
  p_.own(off / kPage);
  const std::uint64_t page = off / kPage;
  const unsigned i = start_write(page, local, cookie);
  Op& o = ops_[i];
  unsigned order[kMaxServers];
  const unsigned n = rank_servers(page, p_.n, p_.live_mask(), order);
  if (n < p_.scheme.k) p_.pages_lost(page, 0);
  for (unsigned piece = 0; piece < p_.scheme.pieces() && piece < n; ++piece) {
    o.servers_used |= 1u << order[piece];
    send_piece(i, piece, order[piece], true);
  }
}

void PoolQueuePair::post_repair(std::uint64_t page, std::uint64_t w, const void* local, std::uint64_t cookie) {
  const unsigned i = start_write(page, local, cookie);
  Op& o = ops_[i];
  const std::uint32_t live = p_.live_mask();
  for (unsigned piece = 0; piece < p_.scheme.pieces(); ++piece) {
    const unsigned s = piece_server(w, piece);
    if (s != 0 && (live & (1u << (s - 1)))) {
      o.servers_used |= 1u << (s - 1);
      o.got |= 1u << piece;
    } else {
      w = with_piece(w, piece, 0);
    }
  }
  o.loc = w;
  for (unsigned piece = 0; piece < p_.scheme.pieces(); ++piece)
    if (!(o.got & (1u << piece)) && !place_piece(i, piece)) break;
  if (o.outstanding == 0) {  // nowhere to put them: the page stays as it was
    p_.loc[page].store(o.loc, std::memory_order_release);
    finish(i);
  }
}

unsigned PoolQueuePair::start_write(std::uint64_t page, const void* local, std::uint64_t cookie) {
  const unsigned i = new_op();
  Op& o = ops_[i];
  o.write = true;
  o.cookie = cookie;
  o.page = page;
  o.local = static_cast<unsigned char*>(const_cast<void*>(local));
  o.loc = 0;
  o.sum = page_checksum(local);
  if (p_.scheme.m > 0 && !p_.scheme.replicas) {
    unsigned char* parity[kMaxPieces];
    for (unsigned j = 0; j < p_.scheme.m; ++j) parity[j] = o.scratch.data() + j * p_.scheme.piece_bytes();
    codec_.encode(o.local, parity);
  }
  return i;
}

void PoolQueuePair::post_read(std::uint64_t off, void* local, std::size_t len, std::uint64_t cookie) {
  if (len != kPage || off % kPage) detail::fatal("the pool reads whole pages (asked %zu bytes at %llu)", len,
                                                 static_cast<unsigned long long>(off));
  const std::uint64_t page = off / kPage;
  const std::uint64_t w = p_.loc[page].load(std::memory_order_acquire) & ~kBusy;
  if (w == 0) {  // never written (or discarded): zeros, as a fresh server gives
    std::memset(local, 0, kPage);
    ready_.push_back({cookie});
    return;
  }
  const unsigned i = new_op();
  Op& o = ops_[i];
  o.write = false;
  o.cookie = cookie;
  o.page = page;
  o.local = static_cast<unsigned char*>(local);
  o.loc = w;
  o.sum = p_.sums[page].load(std::memory_order_acquire);
  plan_read(i);
}

// Asks for the pieces a read still needs: with replicas one copy at a time
// (spread by page over the holders); with a code the K data pieces straight
// into the frame if their servers are up, else any K live pieces to decode.
void PoolQueuePair::plan_read(unsigned op) {
  Op& o = ops_[op];
  const Scheme& sc = p_.scheme;
  const std::uint32_t live = p_.live_mask();
  auto available = [&](unsigned piece) {
    const unsigned s = piece_server(o.loc, piece);
    return s != 0 && (live & (1u << (s - 1))) && !(o.tried & (1u << piece));
  };
  if (sc.k == 1) {
    const unsigned np = sc.pieces();
    for (unsigned t = 0; t < np; ++t) {
      const unsigned piece = static_cast<unsigned>((o.page + o.attempts + t) % np);
      if (!available(piece)) continue;
      if (t != 0 || o.attempts) p_.degraded_reads.fetch_add(1, std::memory_order_relaxed);
      o.tried |= 1u << piece;
      send_piece(op, piece, piece_server(o.loc, piece) - 1, false);
      return;
    }
    p_.pages_lost(o.page, o.loc);
  }
  // Pieces already here count toward K.
  unsigned have = __builtin_popcount(o.got);
  bool data_all = o.tried == 0;
  for (unsigned piece = 0; piece < sc.k && data_all; ++piece) data_all = available(piece);
  if (data_all) {
    for (unsigned piece = 0; piece < sc.k; ++piece) {
      o.tried |= 1u << piece;
      send_piece(op, piece, piece_server(o.loc, piece) - 1, false);
    }
    return;
  }
  if (!o.into_scratch) {
    // Switching to a decode: pieces that went straight to the frame are copied
    // to their place in the scratch buffer.
    for (unsigned piece = 0; piece < sc.k; ++piece)
      if (o.got & (1u << piece))
        std::memcpy(o.scratch.data() + piece * sc.piece_bytes(), o.local + piece * sc.piece_bytes(), sc.piece_bytes());
    o.into_scratch = true;
    p_.degraded_reads.fetch_add(1, std::memory_order_relaxed);
  }
  for (unsigned piece = 0; piece < sc.pieces() && have + o.outstanding < sc.k; ++piece) {
    if (!available(piece)) continue;
    o.tried |= 1u << piece;
    send_piece(op, piece, piece_server(o.loc, piece) - 1, false);
  }
  if (have + o.outstanding < sc.k) p_.pages_lost(o.page, o.loc);
}

void PoolQueuePair::finish(unsigned op, bool failed) {
  Op& o = ops_[op];
  ready_.push_back({o.cookie, failed});
  o.used = false;
  --active_;
  free_.push_back(op);
}

void PoolQueuePair::read_done(unsigned op) {
  Op& o = ops_[op];
  const Scheme& sc = p_.scheme;
  if (o.into_scratch) {
    unsigned have[kMaxPieces];
    const unsigned char* pieces[kMaxPieces];
    unsigned n = 0;
    for (unsigned piece = 0; piece < sc.pieces() && n < sc.k; ++piece)
      if (o.got & (1u << piece)) {
        have[n] = piece;
        pieces[n++] = o.scratch.data() + piece * sc.piece_bytes();
      }
    if (n < sc.k || !codec_.decode(have, pieces, o.local)) p_.pages_lost(o.page, o.loc);
  }
  if (page_checksum(o.local) == o.sum) return finish(op);
  // Not the page we wrote: a torn or stale piece. Read it again from other pieces.
  p_.checksum_retries.fetch_add(1, std::memory_order_relaxed);
  if (++o.attempts > sc.pieces())
    detail::fatal("far page %llu read back from the pool does not match what was written, from any %u of its "
                  "pieces; a memory server returned wrong data",
                  static_cast<unsigned long long>(o.page), sc.k);
  o.got = 0;
  if (sc.k != 1) {
    // Decode without one piece at a time: one bad piece among K+M is found.
    o.tried = 1u << ((o.attempts - 1) % sc.pieces());
    o.direct = 0;
  }
  plan_read(op);
}

void PoolQueuePair::on_piece(unsigned op, unsigned piece, unsigned server, bool failed) {
  Op& o = ops_[op];
  --o.outstanding;
  --inflight_[server];
  if (failed) {
    p_.server_failed(server);
    if (o.write) {
      if (!place_piece(op, piece) && o.outstanding == 0 && o.got == 0) p_.pages_lost(o.page, 0);
    } else {
      plan_read(op);
    }
  } else {
    o.got |= 1u << piece;
    if (o.write) o.loc = with_piece(o.loc, piece, server + 1);
    else if (o.into_scratch && (o.direct & (1u << piece)) && p_.scheme.k > 1)  // sent before the switch to a decode
      std::memcpy(o.scratch.data() + piece * p_.scheme.piece_bytes(), o.local + piece * p_.scheme.piece_bytes(),
                  p_.scheme.piece_bytes());
  }
  if (o.outstanding != 0) return;
  if (o.write) {
    if (__builtin_popcount(o.got) < p_.scheme.k) p_.pages_lost(o.page, o.loc);
    if (__builtin_popcount(o.got) < p_.scheme.pieces()) p_.degraded_writes.fetch_add(1, std::memory_order_relaxed);
    p_.sums[o.page].store(o.sum, std::memory_order_relaxed);
    p_.note_written(o.page);
    p_.loc[o.page].store(o.loc, std::memory_order_release);  // also gives up ownership
    return finish(op);
  }
  const unsigned need = p_.scheme.k;
  if (static_cast<unsigned>(__builtin_popcount(o.got)) >= need) read_done(op);
  else plan_read(op);
}

// The pool marked server s down: whatever this queue pair has in flight there
// fails now (its connection may be open but silent, as with a stopped server).
void PoolQueuePair::abandon(unsigned s) {
  qps_[s].reset();  // closes the connection: a late reply cannot land in a reused op
  std::vector<std::pair<unsigned, unsigned>> lost;
  for (unsigned op = 0; op < ops_.size(); ++op) {
    if (!ops_[op].used) continue;
    for (unsigned piece = 0; piece < 16; ++piece)
      if (sent_piece_server_[op * 16 + piece] == s + 1) {
        sent_piece_server_[op * 16 + piece] = 0;
        lost.emplace_back(op, piece);
      }
  }
  for (auto [op, piece] : lost) on_piece(op, piece, s, true);
}

std::size_t PoolQueuePair::poll(net::Completion* out, std::size_t max) {
  if (ready_.empty() && active_ != 0) {
    net::Completion got[64];
    for (unsigned s = 0; s < p_.n; ++s) {
      if (!qps_[s] || inflight_[s] == 0) continue;
      if (p_.member(s).down.load(std::memory_order_acquire)) {
        abandon(s);
        continue;
      }
      for (std::size_t n; (n = qps_[s]->poll(got, 64)) != 0;)
        for (std::size_t k = 0; k < n; ++k) {
          const unsigned op = static_cast<unsigned>(got[k].cookie / 16), piece = static_cast<unsigned>(got[k].cookie % 16);
          if (sent_piece_server_[op * 16 + piece] != s + 1) continue;  // abandoned already
          sent_piece_server_[op * 16 + piece] = 0;
          on_piece(op, piece, s, got[k].failed);
        }
    }
    submit();  // pieces re-sent elsewhere
  }
  return net::take_completions(ready_, out, max);
}

Pool::Pool(const Config& cfg)
    : scheme(parse_scheme(cfg.redundancy)), n(static_cast<unsigned>(split_uris(cfg.backend).size())) {
  const std::vector<std::string> uris = split_uris(cfg.backend);
  if (uris.size() > kMaxServers)
    throw Error("FARMEM_BACKEND names " + std::to_string(uris.size()) + " servers; a pool takes at most 15");
  for (const std::string& u : uris) {
    if (u.empty()) throw Error("FARMEM_BACKEND='" + cfg.backend + "' has an empty entry; separate URIs with one comma");
    if (u.rfind("tcp://", 0) != 0)
      throw Error("FARMEM_BACKEND: '" + u + "' cannot be a pool member; a pool's servers are tcp://HOST:PORT for now");
  }
  if (scheme.pieces() > n)
    throw Error("FARMEM_REDUNDANCY=" + scheme.name() + " puts each page on " + std::to_string(scheme.pieces()) +
                " servers but FARMEM_BACKEND names " + std::to_string(n) + "; add servers or lower the redundancy");
  const std::uint64_t far = cfg.far_mem_bytes ? cfg.far_mem_bytes : 64ull << 30;
  npages = far / kPage;
  net::MemberOptions opt;
  // Each server holds at most one piece of each page.
  opt.capacity = npages * scheme.piece_bytes();
  timeout_ms_ = cfg.server_timeout_ms ? cfg.server_timeout_ms : 5000;
  opt.timeout_ns = timeout_ms_ * 1000000ull;
  for (const std::string& u : uris) {
    opt.uri = u;
    members_.emplace_back();
    members_.back().uri = u;
    members_.back().t = net::connect_tcp_member(cfg, opt);  // throws naming the server
  }
  loc = map_table<std::atomic<std::uint64_t>>(npages);
  sums = map_table<std::atomic<std::uint32_t>>(npages);
  repair_ = std::thread([this] { repair_loop(); });
}

void Pool::shutdown() {
  {
    std::lock_guard<std::mutex> g(mu_);
    if (stop_) return;
    stop_ = true;
  }
  cv_.notify_all();
  if (repair_.joinable()) repair_.join();
  for (auto& m : members_) m.t->shutdown();
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
    own(p);
    loc[p].store(0, std::memory_order_release);
  }
  for (auto& m : members_)
    if (!m.down.load()) m.t->discard(first * scheme.piece_bytes(), (end - first) * scheme.piece_bytes());
}

void Pool::server_failed(unsigned s) {
  if (members_[s].down.exchange(true)) return;
  const unsigned live = static_cast<unsigned>(__builtin_popcount(live_mask()));
  std::fprintf(stderr, "farmem: memory server %s is down (connection lost, or no answer within %llu ms); %u of %u left, %s\n",
               members_[s].uri.c_str(), static_cast<unsigned long long>(timeout_ms_), live, n,
               live >= scheme.pieces() ? "rebuilding its pieces on the others"
                                       : "running with less redundancy");
  {
    std::lock_guard<std::mutex> g(mu_);
    ++repair_wanted_;
  }
  cv_.notify_all();
}

void Pool::pages_lost(std::uint64_t page, std::uint64_t w) {
  std::string down;
  for (unsigned s = 0; s < n; ++s)
    if (members_[s].down.load()) down += (down.empty() ? "" : ", ") + members_[s].uri;
  detail::fatal("far memory lost: memory servers %s are down, more than %s covers (far page %llu%s); restart the "
                "application with the servers back",
                down.empty() ? "(none)" : down.c_str(), scheme.name().c_str(), static_cast<unsigned long long>(page),
                w ? " had too few pieces left" : " cannot be written");
}

// Claims `page` for a repair if it has a piece on a lost server (or lacks one)
// and a live server can take it; fatal if fewer than K pieces are left.
bool Pool::claim_for_repair(std::uint64_t page, bool* stuck) {
  std::uint64_t w = loc[page].load(std::memory_order_acquire);
  if (w == 0 || (w & kBusy)) return false;  // never written, or being written (to live servers)
  const std::uint32_t live = live_mask();
  unsigned alive = 0;  // pieces on live servers
  for (unsigned piece = 0; piece < scheme.pieces(); ++piece) {
    const unsigned s = piece_server(w, piece);
    alive += s != 0 && (live & (1u << (s - 1)));
  }
  if (alive < scheme.k) pages_lost(page, w);
  if (alive == scheme.pieces()) return false;
  // A page written while fewer servers were up waits for more.
  if (static_cast<unsigned>(__builtin_popcount(live)) <= alive) return *stuck = true, false;
  return loc[page].compare_exchange_strong(w, w | kBusy, std::memory_order_acq_rel);
}

// Rebuilds, after a loss, every page that had a piece on a lost server: up to
// kRepairBatch pages at a time are read (decoded from the pieces left) and
// written again over the live servers, one round trip each way a batch, which
// leaves the servers most of their bandwidth for the application.
void Pool::repair_loop() {
  detail::g_internal_alloc = 1;  // under the shim: never allocate from the region
  constexpr unsigned kRepairBatch = 64;
  PoolQueuePair qp(*this);
  std::vector<unsigned char> bufs(kRepairBatch * kPage);
  std::vector<std::uint64_t> batch;
  auto drain = [&](std::size_t n) {
    net::Completion c[kRepairBatch];
    for (std::size_t got = 0; got < n;) {
      const std::size_t k = qp.poll(c, kRepairBatch);
      if (k == 0) qp.wait(1000);
      got += k;
    }
  };
  auto flush = [&] {
    for (std::size_t i = 0; i < batch.size(); ++i) qp.post_read(batch[i] * kPage, &bufs[i * kPage], kPage, i);
    qp.submit();
    drain(batch.size());
    for (std::size_t i = 0; i < batch.size(); ++i)
      qp.post_repair(batch[i], loc[batch[i]].load(std::memory_order_acquire) & ~kBusy, &bufs[i * kPage], i);
    qp.submit();
    drain(batch.size());  // each write stores its page's new location word, releasing it
    repaired_pages.fetch_add(batch.size(), std::memory_order_relaxed);
    batch.clear();
  };
  for (;;) {
    {
      std::unique_lock<std::mutex> g(mu_);
      cv_.wait(g, [&] { return stop_ || repair_wanted_ > 0; });
      if (stop_) return;
      repair_wanted_ = 0;
      repair_running_ = true;
    }
    const std::uint64_t t0 = detail::now_ns();
    const std::uint64_t end = high_page_.load();
    bool stuck = false;
    for (std::uint64_t p = 0; p < end; ++p) {
      if ((p & 4095) == 0) {
        std::lock_guard<std::mutex> g(mu_);
        if (stop_) break;
      }
      if (claim_for_repair(p, &stuck)) batch.push_back(p);
      if (batch.size() == kRepairBatch) flush();
    }
    if (!batch.empty()) flush();
    std::lock_guard<std::mutex> g(mu_);
    repair_running_ = false;
    restored_ = !stuck && repair_wanted_ == 0;
    last_repair_ms_ = (detail::now_ns() - t0) / 1000000;
    if (stop_) return;
  }
}

std::string Pool::describe() const {
  std::string s = "pool of " + std::to_string(n) + " (" + scheme.name() + "):";
  for (const auto& m : members_) s += " " + m.uri + (m.down.load() ? " (down)" : "");
  return s;
}

std::string Pool::stats_json() const {
  unsigned down = 0;
  for (const auto& m : members_) down += m.down.load();
  bool running, restored;
  std::uint64_t last;
  {
    std::lock_guard<std::mutex> g(mu_);
    running = repair_running_ || repair_wanted_ > 0;
    restored = !running && restored_;
    last = last_repair_ms_;
  }
  auto u = [](const std::atomic<std::uint64_t>& a) { return std::to_string(a.load()); };
  return "\"pool\":{\"servers\":" + std::to_string(n) + ",\"servers_down\":" + std::to_string(down) +
         ",\"redundancy\":\"" + scheme.name() + "\",\"pieces_written\":" + u(pieces_written) +
         ",\"pieces_read\":" + u(pieces_read) + ",\"bytes_out\":" + u(bytes_out) + ",\"bytes_in\":" + u(bytes_in) +
         ",\"degraded_reads\":" + u(degraded_reads) + ",\"checksum_retries\":" + u(checksum_retries) +
         ",\"degraded_writes\":" + u(degraded_writes) + ",\"pages_repaired\":" + u(repaired_pages) + ",\"repair_running\":" + (running ? "true" : "false") +
         ",\"redundancy_restored\":" + (restored ? "true" : "false") +
         ",\"last_repair_ms\":" + std::to_string(last) + "}";
}

}  // namespace

bool is_pool(const Config& cfg) {
  return cfg.backend.find(',') != std::string::npos || (cfg.redundancy != "none" && !cfg.redundancy.empty());
}

std::unique_ptr<net::Transport> connect_pool(const Config& cfg) { return std::make_unique<Pool>(cfg); }

}  // namespace farmem::tier
