// The protected tier: whole pages sealed (AES-256-GCM, tier/page_seal.cc) by
// the evictor on their way out and opened and checked by the faulting core on
// their way in. The server, and the network to it, only ever see ciphertext.
//
// Where the CPU work happens:
//   seal   on the evictor's core, in post_write, into a scratch buffer (the
//          frame is never changed, so a rescued page stays readable);
//   open   on the faulting core, in poll(): the page lands in a scratch buffer
//          and only a page that passed the check is written to the frame;
//   the server does nothing new.
// A page that fails the check ends the program with one line naming the server
// and the page: there is no other copy to read, and bad bytes never reach it.
// Under a pool (one layer per server, its "pages" the pool's pieces) a piece
// that fails is handed up as zeros and counted: the pool's checksum then
// rebuilds the page from the other servers' pieces.
#include "tier/protected.hpp"

#include <atomic>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <vector>

#include "farmem/runtime.hpp"
#include "runtime/fatal.hpp"
#include "runtime/os.hpp"
#include "tier/page_seal.hpp"
#include "tier/pool.hpp"
#include "tier/queue_pair_slots.hpp"

namespace farmem::tier {
namespace {

using detail::now_ns;
constexpr std::size_t kPage = 4096;

class ProtectedTransport final : public net::Transport {
 public:
  // piece: bytes of one sealed unit (a page, or a pool's piece of one);
  // member: one server of a pool (a failed check is the pool's to mend).
  ProtectedTransport(const Config& cfg, std::unique_ptr<net::Transport> inner, std::size_t piece, bool member)
      : inner_(std::move(inner)),
        piece_(piece),
        member_(member),
        seal_((cfg.far_mem_bytes ? cfg.far_mem_bytes : 64ull << 30) / kPage) {}

  std::unique_ptr<net::QueuePair> create_qp() override;
  void discard(std::uint64_t off, std::uint64_t len) override { inner_->discard(off, len); }
  std::uint64_t remote_usage() override { return inner_->remote_usage(); }
  void shutdown() override { inner_->shutdown(); }
  std::string describe() const override { return inner_->describe(); }
  std::string stats_json() const override;
  void register_local(void* base, std::size_t len) override { inner_->register_local(base, len); }
  bool pins_local_memory() const override { return inner_->pins_local_memory(); }
  bool connected() const override { return inner_->connected(); }
  bool drops_copy_on_read() const override { return inner_->drops_copy_on_read(); }
  void sync_discards() override { inner_->sync_discards(); }
  // The child inherits the key and the table as they are at fork (copy on
  // write); it reads far pages, but has no evictor and never seals one, so
  // no nonce is used twice.
  bool fork_prepare() override { return inner_->fork_prepare(); }
  void fork_parent() override { inner_->fork_parent(); }
  void fork_child() override { inner_->fork_child(); }

  const std::unique_ptr<net::Transport> inner_;
  const std::size_t piece_;
  const bool member_;
  PageSeal seal_;  // its own key: a pool's servers never share a nonce
  // Statistics (FARMEM_STATS "protect"); relaxed counters.
  std::atomic<std::uint64_t> writes_{0}, reads_{0}, seal_ns_{0}, open_ns_{0}, failed_checks_{0};
};

// One per core, like the queue pair it wraps; each post is an op slot (the
// inner queue pair's cookie) with its scratch buffer.
class ProtectedQueuePair final : public net::QueuePair {
 public:
  ProtectedQueuePair(ProtectedTransport& t, std::unique_ptr<net::QueuePair> inner)
      : t_(t), inner_(std::move(inner)), cipher_(t.seal_) {}
  ~ProtectedQueuePair() override {
    inner_.reset();  // nothing may land in a buffer after it is freed
  }

  void post_write(std::uint64_t off, const void* local, std::size_t len, std::uint64_t cookie) override {
    const std::uint64_t page = check(off, len);
    Op op{cookie, page, nullptr, bufs_.take(), t_.seal_.next_version(page), {}, true};
    const std::uint64_t t0 = now_ns();
    cipher_.seal(page, op.version, local, op.buf, t_.piece_, op.tag);
    t_.seal_ns_.fetch_add(now_ns() - t0, std::memory_order_relaxed);
    char* buf = op.buf;
    inner_->post_write(off, buf, t_.piece_, ops_.take(op));
  }

  void post_read(std::uint64_t off, void* local, std::size_t len, std::uint64_t cookie) override {
    const std::uint64_t page = check(off, len);
    Op op{cookie, page, local, bufs_.take(), t_.seal_.version(page), {}, false};
    if (op.version == 0)
      detail::fatal("far page %llu was read from %s but was never stored (a farmem bug; please report it)",
                    static_cast<unsigned long long>(page), t_.describe().c_str());
    std::memcpy(op.tag, t_.seal_.tag(page), PageSeal::kTag);
    char* buf = op.buf;
    inner_->post_read(off, buf, t_.piece_, ops_.take(op));
  }

  void submit() override { inner_->submit(); }

  std::size_t poll(net::Completion* out, std::size_t max) override {
    const std::size_t k = inner_->poll(out, max);
    for (std::size_t i = 0; i < k; ++i) out[i] = finish(static_cast<std::uint32_t>(out[i].cookie), out[i].failed);
    return k;
  }

  void wait(unsigned timeout_us) override { inner_->wait(timeout_us); }

 private:
  struct Op {
    std::uint64_t cookie, page;
    void* dst;  // read: the frame
    char* buf;  // the sealed copy
    std::uint64_t version;
    unsigned char tag[PageSeal::kTag];
    bool write;
  };

  std::uint64_t check(std::uint64_t off, std::size_t len) const {
    if (len != t_.piece_ || off % t_.piece_)
      detail::fatal("the protected tier moves whole units of %zu bytes; got %zu bytes at offset %llu (a farmem bug)",
                    t_.piece_, len, static_cast<unsigned long long>(off));
    return off / t_.piece_;
  }

  net::Completion finish(std::uint32_t slot, bool failed) {
    Op& op = ops_[slot];
    ops_.free(slot);
    bufs_.give(op.buf);
    if (failed) return {op.cookie, true};
    if (op.write) {
      t_.seal_.commit(op.page, op.version, op.tag);
      t_.writes_.fetch_add(1, std::memory_order_relaxed);
      return {op.cookie};
    }
    const std::uint64_t t0 = now_ns();
    if (!cipher_.open(op.page, op.version, op.buf, op.dst, t_.piece_, op.tag)) {
      std::memset(op.dst, 0, t_.piece_);  // whatever the check rejected never stays in a frame
      t_.failed_checks_.fetch_add(1, std::memory_order_relaxed);
      if (t_.member_) return {op.cookie};  // zeros: the pool's checksum fails and it reads other pieces
      detail::fatal("far page %llu came back from %s altered, replayed or moved: it fails its AES-GCM check "
                    "(FARMEM_PROTECT=aead); the memory server or the path to it changed it",
                    static_cast<unsigned long long>(op.page), t_.inner_->describe().c_str());
    }
    t_.open_ns_.fetch_add(now_ns() - t0, std::memory_order_relaxed);
    t_.reads_.fetch_add(1, std::memory_order_relaxed);
    return {op.cookie};
  }

  ProtectedTransport& t_;
  std::unique_ptr<net::QueuePair> inner_;
  PageSeal::Cipher cipher_;
  OpSlots<Op> ops_;
  PageBuffers bufs_{"protected tier"};
};

std::unique_ptr<net::QueuePair> ProtectedTransport::create_qp() {
  return std::make_unique<ProtectedQueuePair>(*this, inner_->create_qp());
}

std::string ProtectedTransport::stats_json() const {
  const std::uint64_t w = writes_.load(std::memory_order_relaxed), r = reads_.load(std::memory_order_relaxed);
  std::string j = "\"protect\":{\"cipher\":\"aes-256-gcm\",\"writes\":" + std::to_string(w) +
                  ",\"reads\":" + std::to_string(r) +
                  ",\"seal_ns_avg\":" + std::to_string(w ? seal_ns_.load(std::memory_order_relaxed) / w : 0) +
                  ",\"open_ns_avg\":" + std::to_string(r ? open_ns_.load(std::memory_order_relaxed) / r : 0) +
                  ",\"failed_checks\":" + std::to_string(failed_checks_.load(std::memory_order_relaxed)) + "}";
  if (std::string in = inner_->stats_json(); !in.empty()) j += "," + in;
  return j;
}

}  // namespace

std::unique_ptr<net::Transport> protect_transport(const Config& cfg, std::unique_ptr<net::Transport> inner) {
  if (!parse_protect(cfg.protect) || cfg.compress != "none" || is_pool(cfg)) return inner;
  return std::make_unique<ProtectedTransport>(cfg, std::move(inner), kPage, false);
}

std::unique_ptr<net::Transport> protect_member(const Config& cfg, std::unique_ptr<net::Transport> member,
                                               std::size_t piece_bytes) {
  if (!parse_protect(cfg.protect) || cfg.compress != "none") return member;
  return std::make_unique<ProtectedTransport>(cfg, std::move(member), piece_bytes, true);
}

}  // namespace farmem::tier
