// The pool's insides, shared by pool.cc (members and membership), pool_qp.cc
// (reads and writes of pieces) and repair.cc (rebuilding lost pieces).
//
// A page's K+M pieces go to the first K+M live servers of its rendezvous
// ranking, at offset page * piece size on each (one piece of a page per
// server). Where they went is kept per page, so a server's loss or a change of
// ranking never sends a read to a server without the piece:
//   location word (8 bytes a page): 4 bits a piece, member slot + 1, 0 = none;
//                                   bit 63 set while a write or a repair owns it
//   checksum (4 bytes a page):      CRC-32C of the page as written
// 12 bytes a page: 3 MiB per GiB of far memory, touched only where pages went far.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <new>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "farmem/runtime.hpp"
#include "tier/placement.hpp"
#include "tier/pool.hpp"
#include "tier/redundancy.hpp"

namespace farmem::tier::impl {

// Buffers that pieces are read into and written from: a member may move them
// with O_DIRECT (file://), which wants 512-byte alignment.
template <class T>
struct IoAllocator {
  using value_type = T;
  static constexpr std::align_val_t kAlign{512};
  IoAllocator() = default;
  template <class U>
  IoAllocator(const IoAllocator<U>&) {}
  T* allocate(std::size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), kAlign)); }
  void deallocate(T* p, std::size_t) { ::operator delete(p, kAlign); }
  template <class U>
  bool operator==(const IoAllocator<U>&) const { return true; }
};
using IoBuffer = std::vector<unsigned char, IoAllocator<unsigned char>>;

constexpr std::uint64_t kBusy = 1ull << 63;
constexpr std::size_t kPage = 4096;

inline unsigned piece_server(std::uint64_t w, unsigned piece) {
  return static_cast<unsigned>((w >> (4 * piece)) & 0xf);
}
inline std::uint64_t with_piece(std::uint64_t w, unsigned piece, unsigned server_plus_1) {
  return (w & ~(0xfull << (4 * piece))) | (std::uint64_t{server_plus_1} << (4 * piece));
}

// A member slot's life: Up (takes pieces), Retiring (named no more in the pool
// file: its pieces are read and moved, none are added), Down (lost or gone;
// its slot can take a new server once no page has a piece there).
enum class State : std::uint8_t { Empty, Up, Retiring, Down };

class PoolQueuePair;

class Pool final : public net::Transport {
 public:
  explicit Pool(const Config& cfg);
  ~Pool() override;

  std::unique_ptr<net::QueuePair> create_qp() override;
  void discard(std::uint64_t off, std::uint64_t len) override;
  std::uint64_t remote_usage() override;
  void shutdown() override;
  std::string describe() const override;
  std::string stats_json() const override;
  std::vector<net::ServerBytes> per_server() const override;

  const Scheme scheme;
  const bool spare_read;  // FARMEM_EC_SPARE_READ
  std::uint64_t npages = 0;
  std::atomic<std::uint64_t>* loc = nullptr;
  std::atomic<std::uint32_t>* sums = nullptr;

  struct Member {
    std::atomic<State> state{State::Empty};
    std::atomic<std::uint32_t> gen{0};             // bumped when the slot takes a new server
    std::atomic<net::Transport*> t{nullptr};       // owned by Pool::transports_
    std::atomic<bool> clear{true};                 // Down, and no page has a piece here
    // For the live statistics (relaxed; never on the fault path): pieces the
    // location words name here, and bytes of pieces written here since the
    // slot took its server.
    std::atomic<std::uint64_t> held_pieces{0}, written_bytes{0};
  };
  Member& member(unsigned s) { return members_[s]; }
  unsigned slots() const { return slots_.load(std::memory_order_acquire); }
  std::uint32_t mask_of(bool retiring_too) const {
    std::uint32_t m = 0;
    for (unsigned s = 0, n = slots(); s < n; ++s) {
      const State st = members_[s].state.load(std::memory_order_acquire);
      if (st == State::Up || (retiring_too && st == State::Retiring)) m |= 1u << s;
    }
    return m;
  }
  std::uint32_t up_mask() const { return mask_of(false); }        // may take pieces
  std::uint32_t readable_mask() const { return mask_of(true); }  // pieces there can be read

  // A page's location word changed from `before` to `after`: moves the
  // members' held-piece counts (pieces a write, repair or discard added or dropped).
  void pieces_moved(std::uint64_t before, std::uint64_t after) {
    int d[kMaxServers] = {};
    for (unsigned piece = 0; piece < scheme.pieces(); ++piece) {
      if (unsigned s = piece_server(before, piece)) --d[s - 1];
      if (unsigned s = piece_server(after, piece)) ++d[s - 1];
    }
    for (unsigned s = 0; s < kMaxServers; ++s)
      if (d[s]) members_[s].held_pieces.fetch_add(static_cast<std::uint64_t>(d[s]), std::memory_order_relaxed);
  }
  void server_failed(unsigned s, std::uint32_t gen);
  [[noreturn]] void pages_lost(std::uint64_t page, std::uint64_t w);
  // Takes a page's location word for a write (waits while a repair holds it).
  std::uint64_t own(std::uint64_t page);
  void note_written(std::uint64_t page) {
    std::uint64_t hi = high_page_.load(std::memory_order_relaxed);
    while (page + 1 > hi && !high_page_.compare_exchange_weak(hi, page + 1)) {
    }
  }

  std::atomic<std::uint64_t> pieces_written{0}, pieces_read{0}, bytes_out{0}, bytes_in{0}, degraded_reads{0},
      degraded_writes{0}, checksum_retries{0}, repaired_pages{0}, joined{0}, retired{0}, spare_wins{0};

 private:
  // membership (pool.cc)
  std::vector<std::string> listed() const;
  void reconcile();
  bool add_server(const std::string& uri);
  void adopt(unsigned s, const std::string& uri, std::unique_ptr<net::Transport> t);
  std::unique_ptr<net::Transport> connect(const net::MemberOptions& opt);
  std::string members_json() const;
  void after_repair_scan(bool restored, std::uint64_t seq_at_start);
  void membership_loop();
  std::string uri_of(unsigned s) const;
  // repair (repair.cc)
  void repair_loop();
  bool claim_for_repair(std::uint64_t page, bool* stuck);

  Config cfg_;
  std::string pool_file_;                // FARMEM_BACKEND=@FILE
  std::int64_t file_stamp_ = -1;         // its mtime and size when last read
  std::uint64_t last_retry_ns_ = 0;      // when listed servers that are not up were last tried
  net::MemberOptions opt_;
  Member members_[kMaxServers];
  std::string uris_[kMaxServers];        // under mu_
  std::uint64_t down_seq_[kMaxServers] = {};  // failure number at which the slot went down
  std::atomic<unsigned> slots_{0};
  std::vector<std::unique_ptr<net::Transport>> transports_;  // every member transport ever made (mu_)
  std::atomic<std::uint64_t> high_page_{0};

  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::uint64_t failures_ = 0;   // servers lost or retiring so far
  unsigned repair_wanted_ = 0;   // losses not yet repaired
  bool repair_running_ = false;  // a scan is under way
  bool restored_ = true;         // the last scan left every page with all its pieces
  std::uint64_t last_repair_ms_ = 0;
  std::uint64_t repair_ns_ = 0;  // every scan's time together
  std::thread repair_;
  // Looks at the servers listed once a second; a thread of its own because
  // connecting to a server that hangs can take the handshake's 5 s.
  std::thread membership_;
};

// One thread's queue pair over the pool: a member queue pair per slot, made
// when first used (again when the slot takes a new server), and a table of
// operations in flight. A member completion's cookie is op index * 16 + piece.
class PoolQueuePair final : public net::QueuePair {
 public:
  explicit PoolQueuePair(Pool& p) : p_(p), codec_(p.scheme) {}
  // The members' queue pairs go first: one whose transfers the kernel finishes
  // on its own (file://, io_uring) waits for them, and a spare piece read late
  // lands in ops_' scratch buffers, which must still be there.
  ~PoolQueuePair() override {
    orphans_.clear();
    for (auto& q : qps_) q.reset();
  }

  void post_read(std::uint64_t off, void* local, std::size_t len, std::uint64_t cookie) override;
  void post_write(std::uint64_t off, const void* local, std::size_t len, std::uint64_t cookie) override;
  // A repair: `page` (owned by the caller, its location word `w`) was read into
  // local; its pieces on servers that are not up go to up servers that hold none
  // of its pieces. The pieces in place are never overwritten, so a read that
  // started from the old location word stays right.
  void post_repair(std::uint64_t page, std::uint64_t w, const void* local, std::uint64_t cookie);
  void submit() override;
  std::size_t poll(net::Completion* out, std::size_t max) override;
  void wait(unsigned timeout_us) override;

 private:
  struct Op {
    bool used = false, write = false;
    std::uint64_t cookie = 0, page = 0;
    unsigned char* local = nullptr;
    std::uint64_t loc = 0;           // write: the word being built; read: the word read from
    std::uint64_t before = 0;        // write: the page's word before it (its pieces until this one lands)
    std::uint32_t outstanding = 0;   // pieces in flight
    std::uint32_t got = 0;           // pieces done (write) or arrived (read)
    std::uint32_t tried = 0;         // read: pieces asked for so far, or failed
    std::uint32_t servers_used = 0;  // write: servers holding a piece of this write
    bool into_scratch = false;       // read: pieces go to the scratch buffer to be decoded
    bool spare = false;              // read: K+1 pieces asked, the first K to arrive taken
    bool done = false;               // completed, a spare piece still in flight
    std::uint32_t direct = 0;        // read: pieces sent straight into the frame
    unsigned attempts = 0;
    std::uint32_t sum = 0;
    IoBuffer scratch;                    // (k+m) pieces: parity to send, or pieces to decode
  };

  unsigned new_op();
  unsigned start_write(std::uint64_t page, const void* local, std::uint64_t cookie);
  net::QueuePair& qp(unsigned s);
  void send_piece(unsigned op, unsigned piece, unsigned server, bool write);
  bool place_piece(unsigned op, unsigned piece);
  void plan_read(unsigned op);
  void finish(unsigned op, bool failed = false);
  void release(unsigned op);
  void on_piece(unsigned op, unsigned piece, unsigned server, bool failed);
  void read_done(unsigned op);
  void abandon(unsigned s);

  Pool& p_;
  Codec codec_;
  std::unique_ptr<net::QueuePair> qps_[kMaxServers];
  // Queue pairs of servers whose slot took a new one while pieces were in flight.
  std::vector<std::pair<unsigned, std::unique_ptr<net::QueuePair>>> orphans_;
  std::uint32_t qp_gen_[kMaxServers] = {};
  std::uint32_t inflight_[kMaxServers] = {};
  std::uint32_t dirty_ = 0;
  std::vector<Op> ops_;
  std::vector<unsigned> free_;
  unsigned active_ = 0;
  std::deque<net::Completion> ready_;
  std::vector<unsigned char> sent_piece_server_;  // op * 16 + piece -> server + 1 in flight
};

}  // namespace farmem::tier::impl
