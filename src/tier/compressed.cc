// The compressed tier: pages compressed by the evictor on their way out, packed
// into the server's address space by PackedStore, and decompressed by the
// faulting core on their way in.
//
// Where the CPU work happens, and why:
//   compress    on the evictor's core, in post_write: write-back is already off
//               the fault path, and the evictor works ahead of demand;
//   decompress  on the faulting core, in poll(): it needs the bytes now, and
//               lz4 gives a page back in about a microsecond;
//   the server  does nothing new: it stores ranges of bytes.
//
// Per far page, a location word (8 bytes) and the page's CRC-32C (4 bytes):
// 12 bytes a page, 3 MiB per GiB of far memory, touched only where pages went
// far. A page read back is freed at once (drops_copy_on_read: the runtime
// installs it dirty), so memory holds each page once, locally or stored.
// A page of zeros is stored as nothing at all; a page that does not shrink
// by a unit is stored as it is. Every page read back is decompressed into its
// frame and checked against its CRC: a damaged piece ends the program with one
// line, never reaches it.
//
// Compaction (FARMEM_COMPACT): when the holes in the server's spans pass a
// share of what it holds, a thread of the layer's own moves the live pieces of
// the sparsest spans into holes elsewhere (read, write, then publish the new
// location with a compare-and-swap) and the emptied spans go back to the
// server. A move bumps the location word's generation; a read that completes
// and finds its page's location changed reads it again from the new place (its
// old bytes may already be reused), and a write-back whose commit finds its
// page moved meanwhile replaces the moved copy. Sealed pieces move as they are.
//
// With FARMEM_PROTECT=aead too (compress, then encrypt), every piece that
// leaves is sealed whole (padding and all) with tier/page_seal.cc, under the
// far page's number and a new version, and opened before it is decompressed;
// the piece's tag and version are in the seal's own per-page table (32 bytes a
// page more). A page stored as it is is sealed into a scratch buffer too.
#include "tier/compressed.hpp"

#include <sys/mman.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

#include "farmem/runtime.hpp"
#include "runtime/fatal.hpp"
#include "runtime/os.hpp"
#include "runtime/runtime.hpp"
#include "tier/compressor.hpp"
#include "tier/packed_store.hpp"
#include "tier/page_seal.hpp"
#include "tier/queue_pair_slots.hpp"
#include "tier/pool.hpp"
#include "tier/redundancy.hpp"

namespace farmem::tier {
namespace {

using detail::now_ns;
constexpr std::size_t kPage = 4096;

// The location word: 0 = nothing stored.
//   bit 63      stored
//   bit 62      a page of zeros (nothing on the server)
//   bits 53-61  generation: how often compaction moved the piece (mod 512)
//   bits 0-12   stored length in bytes (4096: the page as it is)
//   bits 13-52  remote offset / 256
constexpr std::uint64_t kStored = 1ull << 63, kZero = 1ull << 62;
inline std::uint64_t make_loc(std::uint64_t off, std::size_t len, std::uint64_t gen = 0) {
  return kStored | ((gen & 0x1ff) << 53) | ((off >> 8) << 13) | len;
}
inline std::size_t loc_len(std::uint64_t w) { return static_cast<std::size_t>(w & 0x1fff); }
inline std::uint64_t loc_off(std::uint64_t w) { return ((w >> 13) & ((1ull << 40) - 1)) << 8; }
inline std::uint64_t loc_gen(std::uint64_t w) { return (w >> 53) & 0x1ff; }
inline bool has_piece(std::uint64_t w) { return (w & kStored) && !(w & kZero); }
// True if `now` is `before`'s piece after compaction moved it (and nothing else changed it).
inline bool moved(std::uint64_t before, std::uint64_t now) {
  return has_piece(before) && has_piece(now) && now != before && loc_len(now) == loc_len(before) &&
         loc_gen(now) != loc_gen(before);
}


bool is_zero_page(const void* p, std::size_t len) {
  const auto* w = static_cast<const std::uint64_t*>(p);
  if (w[0] != 0) return false;
  return std::memcmp(w, w + 1, len - sizeof *w) == 0;
}

template <class T>
T* map_array(std::uint64_t n) {
  T* t = detail::map_table<T>(n);
  if (t == nullptr) throw Error("cannot map the compressed tier's page map; raise vm.max_map_count or lower FARMEM_FAR_MEM");
  return t;
}

class CompressedQueuePair;

// How the layer is used: over a lone server, a page is 4 KiB and is freed
// from the server when it is read back (exclusive loads); over one server of a
// pool, a "page" is the pool's piece of one (4 KiB / K), a piece read stays
// stored (the pool keeps its redundancy), and a damaged piece reaches the pool
// as zeros, whose checksum then rebuilds the page from other pieces.
struct Layout {
  std::size_t page = kPage;
  bool member = false;
};

class CompressedTransport final : public net::Transport {
 public:
  CompressedTransport(const Config& cfg, CompressSpec spec, std::unique_ptr<net::Transport> inner,
                      std::uint32_t unit, Layout layout)
      : spec_(spec),
        inner_(std::move(inner)),
        page_(layout.page),
        member_(layout.member),
        npages_((cfg.far_mem_bytes ? cfg.far_mem_bytes : 64ull << 30) / kPage),
        store_(std::max<std::uint32_t>(256, unit), npages_ * page_),
        loc_(map_array<std::atomic<std::uint64_t>>(npages_)),
        crc_(map_array<std::atomic<std::uint32_t>>(npages_)),
        seal_(parse_protect(cfg.protect) ? std::make_unique<PageSeal>(npages_) : nullptr),  // its own key per server
        compact_pct_(cfg.compact_pct) {
    if (compact_pct_) compactor_ = std::make_unique<std::thread>([this] { compact_loop(); });
  }
  ~CompressedTransport() override {
    stop_compactor();
    munmap(loc_, npages_ * sizeof *loc_);
    munmap(crc_, npages_ * sizeof *crc_);
  }

  std::unique_ptr<net::QueuePair> create_qp() override;
  void discard(std::uint64_t off, std::uint64_t len) override {
    const std::uint64_t first = off / page_, end = std::min(npages_, (off + len + page_ - 1) / page_);
    for (std::uint64_t p = first; p < end; ++p) {
      if (loc_[p].load(std::memory_order_relaxed) == 0) continue;
      release(loc_[p].exchange(0, std::memory_order_acq_rel));
    }
  }
  std::uint64_t remote_usage() override { return inner_->remote_usage(); }
  void shutdown() override {
    stop_compactor();
    inner_->shutdown();
  }
  std::string describe() const override { return inner_->describe() + ", compressed with " + spec_.name(); }
  // The server alone, for the line that says a sealed piece failed its check.
  std::string server() const { return inner_->describe(); }
  std::string stats_json() const override;
  void register_local(void* base, std::size_t len) override { inner_->register_local(base, len); }
  bool pins_local_memory() const override { return inner_->pins_local_memory(); }
  bool connected() const override { return inner_->connected(); }
  bool drops_copy_on_read() const override { return !member_; }
  void sync_discards() override { inner_->sync_discards(); }
  // The compactor is parked across fork (no move is half done in the child,
  // which has no compactor and only reads).
  bool fork_prepare() override {
    compact_mu_.lock();
    store_.lock();
    return inner_->fork_prepare();
  }
  void fork_parent() override {
    inner_->fork_parent();
    store_.unlock();
    compact_mu_.unlock();
  }
  void fork_child() override {
    inner_->fork_child();
    store_.unlock();
    compactor_stop_ = true;
    (void)compactor_.release();  // the thread is not in the child: nothing to join
    compact_mu_.unlock();
  }

  // A page's stored piece is no longer needed: free it, and give a span that
  // became empty back to the server.
  void release(std::uint64_t w) {
    if (!(w & kStored)) return;
    count(w, -1);
    if (has_piece(w)) free_piece(w);
  }
  // Frees a piece; a span left empty goes back to the server.
  void free_piece(std::uint64_t w) { give_back(store_.free(loc_off(w), store_.units_for(loc_len(w)))); }
  // An emptied span (len 0: none) goes back to the server; its discard is sent
  // before the span can be synced and reused.
  void give_back(PackedStore::Range r) {
    if (!r.len) return;
    inner_->discard(r.off, r.len);
    store_.given_back(r);
  }
  // The statistics of a stored page w, added (sign 1) or taken away (-1).
  void count(std::uint64_t w, int sign) {
    const auto d = static_cast<std::uint64_t>(static_cast<std::int64_t>(sign));  // wraps: -1 subtracts
    pages_.fetch_add(d, std::memory_order_relaxed);
    if (w & kZero) {
      zero_pages_.fetch_add(d, std::memory_order_relaxed);
      return;
    }
    data_stored_.fetch_add(d * loc_len(w), std::memory_order_relaxed);
    if (loc_len(w) == page_) raw_pages_.fetch_add(d, std::memory_order_relaxed);
  }
  // A piece for `units` units. A span given back earlier is written to only
  // after the discards sent for it have reached the server, so a late discard
  // cannot erase a new piece.
  std::uint64_t alloc(unsigned units, std::uint64_t page) {
    bool sync = false;
    std::uint64_t off = store_.alloc(units, page, &sync);
    if (sync) {
      const std::uint64_t n = store_.to_sync();
      inner_->sync_discards();
      store_.synced(n);
      off = store_.alloc(units, page, &sync);
    }
    if (off == UINT64_MAX)
      detail::fatal("far memory is full: the compressed tier used up FARMEM_FAR_MEM (%llu MiB) of address space "
                    "on %s; raise FARMEM_FAR_MEM",
                    static_cast<unsigned long long>(npages_ * kPage >> 20), inner_->describe().c_str());
    return off;
  }

  const CompressSpec spec_;
  const std::unique_ptr<net::Transport> inner_;
  const std::size_t page_;  // bytes of a page as this layer sees it (Layout)
  const bool member_;
  const std::uint64_t npages_;
  PackedStore store_;
  std::atomic<std::uint64_t>* const loc_;
  std::atomic<std::uint32_t>* const crc_;
  const std::unique_ptr<PageSeal> seal_;  // FARMEM_PROTECT=aead, else null

  // Statistics (FARMEM_STATS "compress"); relaxed counters.
  std::atomic<std::uint64_t> pages_{0}, zero_pages_{0}, raw_pages_{0}, data_stored_{0};
  std::atomic<std::uint64_t> writes_{0}, reads_{0}, compress_ns_{0}, decompress_ns_{0}, damaged_{0};
  std::atomic<std::uint64_t> moved_pieces_{0}, moved_bytes_{0}, reread_after_move_{0};

  // Compaction (the compactor thread: CompressedTransport::compact_loop, below).
  void compact_loop();
  bool compact_once(net::QueuePair& qp, PageBuffers& bufs);
  void stop_compactor() {
    {
      std::lock_guard<std::mutex> g(compact_mu_);
      compactor_stop_ = true;
    }
    compact_cv_.notify_all();
    if (compactor_ && compactor_->joinable()) compactor_->join();
  }
  const unsigned compact_pct_;  // holes, in percent of the spans, that start compaction; 0 = never
  std::mutex compact_mu_;       // held while the compactor works (and across fork)
  std::condition_variable compact_cv_;
  bool compactor_stop_ = false;
  std::unique_ptr<std::thread> compactor_;
};

// One per core, like the queue pair it wraps. Work the inner queue pair does
// is named by an op slot (its cookie); pages that need no transfer (zeros)
// complete at once through ready_.
class CompressedQueuePair final : public net::QueuePair {
 public:
  CompressedQueuePair(CompressedTransport& t, std::unique_ptr<net::QueuePair> inner)
      : t_(t), inner_(std::move(inner)), comp_(t.spec_),
        cipher_(t.seal_ ? std::make_unique<PageSeal::Cipher>(*t.seal_) : nullptr) {}
  ~CompressedQueuePair() override {
    inner_.reset();  // nothing may land in a buffer after it is freed
  }

  void post_write(std::uint64_t off, const void* local, std::size_t len, std::uint64_t cookie) override {
    check(off, len);
    const std::size_t pb = t_.page_;
    const std::uint64_t page = off / pb;
    const std::uint64_t old = t_.loc_[page].load(std::memory_order_acquire);
    const std::uint64_t t0 = now_ns();
    if (is_zero_page(local, pb)) {
      t_.compress_ns_.fetch_add(now_ns() - t0, std::memory_order_relaxed);
      commit(page, old, kStored | kZero);
      ready_.push_back({cookie});
      return;
    }
    const unsigned unit = t_.store_.unit();
    char* buf = bufs_.take();
    std::size_t n = pb > unit ? comp_.compress(local, buf, pb - unit, pb) : 0;  // must save at least a unit
    const void* src = buf;
    if (n == 0) {
      bufs_.give(buf);
      buf = nullptr;
      src = local;
      n = pb;
    }
    const unsigned units = t_.store_.units_for(n);
    if (buf) std::memset(buf + n, 0, std::size_t{units} * unit - n);  // no stale bytes of another page leave
    const std::uint32_t crc = page_checksum(local, pb);
    Op op{cookie, page, nullptr, buf, old, 0, crc, true, 0, {}};
    if (cipher_) {  // sealed whole, into the piece's buffer (a page stored as it is gets one)
      if (!op.buf) op.buf = bufs_.take();
      op.version = t_.seal_->next_version(page);
      cipher_->seal(page, op.version, src, op.buf, std::size_t{units} * unit, op.tag);
      src = op.buf;
    }
    t_.compress_ns_.fetch_add(now_ns() - t0, std::memory_order_relaxed);
    const std::uint64_t remote = t_.alloc(units, page);
    op.new_w = make_loc(remote, n);
    const std::uint32_t slot = ops_.take(op);
    inner_->post_write(remote, src, std::size_t{units} * unit, slot);
  }

  void post_read(std::uint64_t off, void* local, std::size_t len, std::uint64_t cookie) override {
    check(off, len);
    const std::size_t pb = t_.page_;
    const std::uint64_t page = off / pb;
    const std::uint64_t w = t_.loc_[page].load(std::memory_order_acquire);
    if (!(w & kStored))
      detail::fatal("far page %llu was read from %s but was never stored (a farmem bug; please report it)",
                    static_cast<unsigned long long>(page), t_.describe().c_str());
    t_.reads_.fetch_add(1, std::memory_order_relaxed);
    if (w & kZero) {
      std::memset(local, 0, pb);
      drop(page, w);
      ready_.push_back({cookie});
      return;
    }
    const std::uint32_t crc = t_.crc_[page].load(std::memory_order_relaxed);
    const std::size_t n = loc_len(w);
    const std::size_t bytes = std::size_t{t_.store_.units_for(n)} * t_.store_.unit();
    // A page stored as it is lands in its frame, unless it is sealed.
    char* buf = n == pb && !cipher_ ? nullptr : bufs_.take();
    Op op{cookie, page, local, buf, w, 0, crc, false, 0, {}};
    if (cipher_) {
      op.version = t_.seal_->version(page);
      std::memcpy(op.tag, t_.seal_->tag(page), PageSeal::kTag);
    }
    const std::uint32_t slot = ops_.take(op);
    inner_->post_read(loc_off(w), buf ? static_cast<void*>(buf) : local, bytes, slot);
  }

  void submit() override { inner_->submit(); }

  std::size_t poll(net::Completion* out, std::size_t max) override {
    std::size_t n = 0;
    while (n < max && !ready_.empty()) {
      out[n++] = ready_.front();
      ready_.pop_front();
    }
    if (n == max || ops_.idle()) return n;
    net::Completion got[64];
    const std::size_t k = inner_->poll(got, std::min<std::size_t>(max - n, 64));
    for (std::size_t i = 0; i < k; ++i)
      if (finish(static_cast<std::uint32_t>(got[i].cookie), got[i].failed, &out[n])) ++n;
    return n;
  }

  void wait(unsigned timeout_us) override {
    if (ready_.empty()) inner_->wait(timeout_us);
  }

 private:
  struct Op {
    std::uint64_t cookie, page;
    void* dst;       // read: the frame
    char* buf;       // the compressed piece, or null for a page stored as it is
    std::uint64_t w;      // read: the location read; write: the location before it
    std::uint64_t new_w;  // write: the new location
    std::uint32_t crc;
    bool write;
    std::uint64_t version;  // sealed: the version and tag of the piece
    unsigned char tag[PageSeal::kTag];
  };

  void check(std::uint64_t off, std::size_t len) const {
    if (len != t_.page_ || off % t_.page_)
      detail::fatal("the compressed tier moves whole pages; got %zu bytes at offset %llu (a farmem bug)", len,
                    static_cast<unsigned long long>(off));
  }

  // The op in `slot` is done: its completion goes to *out (true), or, for a
  // read whose piece compaction moved meanwhile, the read is posted again at
  // the new place (false: nothing to report yet).
  bool finish(std::uint32_t slot, bool failed, net::Completion* out) {
    Op op = ops_[slot];
    if (!op.write && !failed) {
      const std::uint64_t now = t_.loc_[op.page].load(std::memory_order_acquire);
      if (moved(op.w, now)) {  // the bytes read may be another page's by now
        t_.reread_after_move_.fetch_add(1, std::memory_order_relaxed);
        ops_[slot].w = now;
        const std::size_t bytes = std::size_t{t_.store_.units_for(loc_len(now))} * t_.store_.unit();
        inner_->post_read(loc_off(now), op.buf ? static_cast<void*>(op.buf) : op.dst, bytes, slot);
        inner_->submit();
        return false;
      }
    }
    ops_.free(slot);
    *out = finish(op, failed);
    return true;
  }

  net::Completion finish(Op& op, bool failed) {
    if (op.write) {
      if (op.buf) bufs_.give(op.buf);
      if (failed) {
        t_.free_piece(op.new_w);
        return {op.cookie, true};
      }
      t_.crc_[op.page].store(op.crc, std::memory_order_relaxed);
      if (cipher_) t_.seal_->commit(op.page, op.version, op.tag);
      commit(op.page, op.w, op.new_w);
      t_.writes_.fetch_add(1, std::memory_order_relaxed);
      return {op.cookie};
    }
    if (!failed) {
      const std::uint64_t t0 = now_ns();
      bool ok = !cipher_ || open(op);
      const bool raw = loc_len(op.w) == t_.page_;
      if (ok && cipher_ && raw) std::memcpy(op.dst, op.buf, t_.page_);
      ok = ok && (op.buf && !raw ? comp_.decompress(op.buf, loc_len(op.w), op.dst, t_.page_) : true);
      ok = ok && page_checksum(op.dst, t_.page_) == op.crc;
      t_.decompress_ns_.fetch_add(now_ns() - t0, std::memory_order_relaxed);
      if (!ok) t_.damaged_.fetch_add(1, std::memory_order_relaxed);
      if (!ok && t_.member_) {
        std::memset(op.dst, 0, t_.page_);  // the pool's checksum fails, and it reads other pieces
      } else if (!ok) {
        detail::fatal("far page %llu came back damaged from %s: its stored piece (%zu bytes at offset %llu) does "
                      "not %s; the memory server's memory or the path to it is corrupting data",
                      static_cast<unsigned long long>(op.page), t_.describe().c_str(), loc_len(op.w),
                      static_cast<unsigned long long>(loc_off(op.w)),
                      op.buf ? "decompress to the page that was written" : "match the page's checksum");
      }
    }
    if (op.buf) bufs_.give(op.buf);
    if (!failed) drop(op.page, op.w);
    return {op.cookie, failed};
  }

  // Opens a sealed piece in its buffer; one that fails the check ends the
  // program before any of it reaches the frame, or, for a pool's server, is
  // counted and handed up as zeros (false).
  bool open(Op& op) {
    const std::size_t bytes = std::size_t{t_.store_.units_for(loc_len(op.w))} * t_.store_.unit();
    if (cipher_->open(op.page, op.version, op.buf, op.buf, bytes, op.tag)) return true;
    if (t_.member_) return false;  // counted as damaged
    detail::fatal("far page %llu came back from %s altered, replayed or moved: its piece (%zu bytes at offset %llu) "
                  "fails its AES-GCM check (FARMEM_PROTECT=aead); the memory server or the path to it changed it",
                  static_cast<unsigned long long>(op.page), t_.server().c_str(), bytes,
                  static_cast<unsigned long long>(loc_off(op.w)));
  }

  // A page read back is no longer stored (exclusive loads, as zswap has):
  // the runtime installs it dirty, and writes it again when it evicts it, so
  // a page's memory is either local or stored, not both.
  void drop(std::uint64_t page, std::uint64_t w) {
    if (t_.member_) return;  // a pool keeps what it stored
    std::uint64_t expect = w;
    if (t_.loc_[page].compare_exchange_strong(expect, 0, std::memory_order_acq_rel)) t_.release(w);
  }

  // Publishes a page's new location if it still has the one it had when its
  // write was posted, or that piece moved by compaction, and frees the piece
  // that is no longer used. Anything else (a far free dropped it meanwhile)
  // leaves the new piece unused.
  void commit(std::uint64_t page, std::uint64_t before, std::uint64_t now) {
    std::uint64_t expect = before;
    while (!t_.loc_[page].compare_exchange_strong(expect, now, std::memory_order_acq_rel)) {
      if (!moved(before, expect)) {
        if (has_piece(now)) t_.free_piece(now);
        return;
      }
      before = expect;  // the moved copy is the one this write replaces
    }
    t_.count(now, 1);
    t_.release(before);
  }

  CompressedTransport& t_;
  std::unique_ptr<net::QueuePair> inner_;
  Compressor comp_;
  const std::unique_ptr<PageSeal::Cipher> cipher_;  // FARMEM_PROTECT=aead, else null
  OpSlots<Op> ops_;
  PageBuffers bufs_{"compressed tier"};
  std::deque<net::Completion> ready_;
};

// ---- Compaction ----------------------------------------------------------

// Holes below this are not worth a move, whatever their share.
constexpr std::uint64_t kMinHoles = 1ull << 20;

void CompressedTransport::compact_loop() {
  detail::g_internal_alloc = 1;  // under the shim: never allocate from the region
  std::unique_ptr<net::QueuePair> qp;  // its own, made when first needed
  PageBuffers bufs("compactor");       // the pieces in flight, reused from one round to the next
  std::unique_lock<std::mutex> g(compact_mu_);
  while (!compactor_stop_) {
    compact_cv_.wait_for(g, std::chrono::milliseconds(100));
    for (;;) {  // until the holes are below the mark or nothing more can move
      if (compactor_stop_) break;
      const PackedStore::Usage u = store_.usage();
      const std::uint64_t holes = u.span_bytes - u.piece_bytes;
      if (holes < kMinHoles || holes * 100 < std::uint64_t{compact_pct_} * u.span_bytes) break;
      if (!qp) qp = inner_->create_qp();
      if (!compact_once(*qp, bufs)) break;
    }
  }
  qp.reset();
}

// Moves the live pieces of a few of the sparsest spans: reads them all, writes
// each into a hole elsewhere, then publishes each new location if the page
// still has the piece that was read. Returns false if there was nothing to move.
bool CompressedTransport::compact_once(net::QueuePair& qp, PageBuffers& bufs) {
  std::vector<std::uint64_t> spans;
  const std::vector<PackedStore::Piece> pieces = store_.drain(8, &spans);
  struct Move {
    std::uint64_t page, w, new_w;
    unsigned units;
    char* buf;
    bool ok;
  };
  std::vector<Move> moves;
  for (const PackedStore::Piece& p : pieces) {
    const std::uint64_t w = loc_[p.owner].load(std::memory_order_acquire);
    if (has_piece(w) && loc_off(w) == p.off) moves.push_back({p.owner, w, 0, p.units, bufs.take(), false});
  }
  const std::size_t unit = store_.unit();
  auto run = [&](bool write) {  // posts every move's read or write, and waits for them
    std::size_t pending = 0;
    for (std::size_t i = 0; i < moves.size(); ++i) {
      Move& m = moves[i];
      if (write && !m.ok) continue;
      m.ok = false;
      if (write) qp.post_write(loc_off(m.new_w), m.buf, m.units * unit, i);
      else qp.post_read(loc_off(m.w), m.buf, m.units * unit, i);
      ++pending;
    }
    qp.submit();
    net::Completion c[64];
    while (pending) {
      const std::size_t k = qp.poll(c, 64);
      for (std::size_t i = 0; i < k; ++i) moves[c[i].cookie].ok = !c[i].failed;
      pending -= k;
      if (k == 0) qp.wait(1000);
    }
  };
  run(false);
  for (Move& m : moves)
    if (m.ok) m.new_w = make_loc(alloc(m.units, m.page), loc_len(m.w), loc_gen(m.w) + 1);
  run(true);
  for (Move& m : moves) {
    if (m.new_w == 0) continue;  // its read failed
    std::uint64_t expect = m.w;
    if (m.ok && loc_[m.page].compare_exchange_strong(expect, m.new_w, std::memory_order_acq_rel)) {
      free_piece(m.w);
      moved_pieces_.fetch_add(1, std::memory_order_relaxed);
      moved_bytes_.fetch_add(m.units * unit, std::memory_order_relaxed);
    } else {
      free_piece(m.new_w);  // the page changed meanwhile (or the write failed): its new piece is unused
    }
  }
  for (std::uint64_t s : spans) give_back(store_.undrain(s));
  for (Move& m : moves) bufs.give(m.buf);
  return !moves.empty();
}

std::unique_ptr<net::QueuePair> CompressedTransport::create_qp() {
  return std::make_unique<CompressedQueuePair>(*this, inner_->create_qp());
}

std::string CompressedTransport::stats_json() const {
  const PackedStore::Usage u = store_.usage();
  const std::uint64_t pages = pages_.load(std::memory_order_relaxed);
  const std::uint64_t data = pages * page_;
  const std::uint64_t writes = writes_.load(std::memory_order_relaxed), reads = reads_.load(std::memory_order_relaxed);
  char ratio[32];
  std::snprintf(ratio, sizeof ratio, "%.2f", u.span_bytes ? double(data) / double(u.span_bytes) : 0.0);
  std::string j = "\"compress\":{\"codec\":\"" + spec_.name() + "\",\"pages\":" + std::to_string(pages) +
                  ",\"zero_pages\":" + std::to_string(zero_pages_.load(std::memory_order_relaxed)) +
                  ",\"raw_pages\":" + std::to_string(raw_pages_.load(std::memory_order_relaxed)) +
                  ",\"data_bytes\":" + std::to_string(data) +
                  ",\"compressed_bytes\":" + std::to_string(data_stored_.load(std::memory_order_relaxed)) +
                  ",\"piece_bytes\":" + std::to_string(u.piece_bytes) +
                  ",\"stored_bytes\":" + std::to_string(u.span_bytes) + ",\"ratio\":" + ratio +
                  ",\"writes\":" + std::to_string(writes) + ",\"reads\":" + std::to_string(reads) +
                  ",\"compress_ns_avg\":" +
                  std::to_string(writes ? compress_ns_.load(std::memory_order_relaxed) / writes : 0) +
                  ",\"decompress_ns_avg\":" +
                  std::to_string(reads ? decompress_ns_.load(std::memory_order_relaxed) / reads : 0) +
                  ",\"damaged\":" + std::to_string(damaged_.load(std::memory_order_relaxed)) +
                  ",\"moved_pieces\":" + std::to_string(moved_pieces_.load(std::memory_order_relaxed)) +
                  ",\"moved_bytes\":" + std::to_string(moved_bytes_.load(std::memory_order_relaxed)) +
                  ",\"reread_after_move\":" + std::to_string(reread_after_move_.load(std::memory_order_relaxed)) +
                  "}";
  if (std::string in = inner_->stats_json(); !in.empty()) j += "," + in;
  return j;
}

}  // namespace

std::string compress_refusal(const Config& cfg) {
  parse_compress(cfg.compress);  // throws naming a bad codec
  return {};
}

std::unique_ptr<net::Transport> compress_transport(const Config& cfg, std::unique_ptr<net::Transport> inner) {
  const CompressSpec spec = parse_compress(cfg.compress);
  if (spec.kind == CompressSpec::Kind::None || is_pool(cfg)) return inner;  // a pool compresses its members
  return std::make_unique<CompressedTransport>(cfg, spec, std::move(inner), net::io_unit(cfg), Layout{});
}

std::unique_ptr<net::Transport> compress_member(const Config& cfg, const std::string& uri,
                                                std::unique_ptr<net::Transport> member, std::size_t piece_bytes) {
  const CompressSpec spec = parse_compress(cfg.compress);
  if (spec.kind == CompressSpec::Kind::None) return member;
  Config one = cfg;
  one.backend = uri;
  return std::make_unique<CompressedTransport>(cfg, spec, std::move(member), net::io_unit(one),
                                               Layout{piece_bytes, true});
}

}  // namespace farmem::tier
