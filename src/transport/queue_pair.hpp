// The transport interface: per-core queue pairs that move whole pages between a
// local frame and a remote slot, asynchronously. post_* queue work, submit()
// rings the doorbell for everything queued (one batch), poll() reaps completions.
// A queue pair is used by one thread only; there is no lock between cores.
#pragma once
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

namespace farmem {
struct Config;
}

namespace farmem::net {

struct Completion {
  std::uint64_t cookie;
  // Only a pool member (MemberOptions) reports a failure; a lone transport ends
  // the process with one line instead, as there is no other copy to read.
  bool failed = false;
};

// A transport that is one server of a pool (tier/pool.cc) survives its server:
// when the server closes the connection or is silent for timeout_ns, its queue
// pairs complete what is pending as failed and fail whatever comes after.
struct MemberOptions {
  std::string uri;
  std::uint64_t capacity = 0;  // bytes to reserve on this server
  std::uint64_t timeout_ns = 0;
};

// Moves up to max finished entries (cookies, or completions that may say
// failed) from a transport's done queue into out.
template <class Done>
std::size_t take_completions(std::deque<Done>& done, Completion* out, std::size_t max) {
  std::size_t n = 0;
  for (; n < max && !done.empty(); ++n) {
    out[n] = Completion{done.front()};
    done.pop_front();
  }
  return n;
}

class QueuePair {
 public:
  virtual ~QueuePair() = default;
  virtual void post_read(std::uint64_t remote_off, void* local, std::size_t len,
                         std::uint64_t cookie) = 0;
  virtual void post_write(std::uint64_t remote_off, const void* local, std::size_t len,
                          std::uint64_t cookie) = 0;
  virtual void submit() = 0;
  // Returns how many completions were written to out (at most max). Never blocks.
  virtual std::size_t poll(Completion* out, std::size_t max) = 0;
  // Called by a waiter that found nothing to poll: a transport whose completions
  // come from the kernel (tcp) sleeps until data may be there, at most timeout_us,
  // so a memory server on the same machine gets the CPU. Others return at once.
  virtual void wait(unsigned timeout_us) { (void)timeout_us; }
};

// What one memory server holds for a client and what was written to it, as the
// client counted (the live statistics' per-server rows).
struct ServerBytes {
  unsigned slot = 0;           // a pool's member slot
  std::string uri;
  std::uint64_t far_bytes = 0;      // pieces the client's location words name there
  std::uint64_t written_bytes = 0;  // pieces written there (and completed)
  bool up = true;
};

class Transport {
 public:
  virtual ~Transport() = default;
  virtual std::unique_ptr<QueuePair> create_qp() = 0;
  // The remote copies of [off, off+len) are no longer needed.
  virtual void discard(std::uint64_t off, std::uint64_t len) = 0;
  // Bytes the memory server holds for us (its resident memory), or 0 if unknown.
  virtual std::uint64_t remote_usage() = 0;
  virtual void shutdown() = 0;
  virtual std::string describe() const = 0;
  // Local memory that queue pairs will move pages to and from (the frame pool),
  // told once before the first create_qp(). A transport whose NIC needs
  // registered memory (rdma) registers it here; throws farmem::Error.
  virtual void register_local(void* base, std::size_t len) { (void)base, (void)len; }
  // True if register_local() pinned that memory: its pages must then stay where
  // they are (no UFFDIO_MOVE of frames, which the transparent region does).
  virtual bool pins_local_memory() const { return false; }
  // False while a deferred transport (transport/connect.cc) has not connected yet:
  // no page has gone far.
  virtual bool connected() const { return true; }
  // Returns once every discard() made before it has taken effect on the
  // server, so a range given back can be written again safely. Transports
  // whose discard() waits for the server (tcp, dpdk, file) need do nothing.
  virtual void sync_discards() {}
  // True if a page read back is no longer stored (the compressed tier frees
  // it, as zswap does): the runtime must write the page again to evict it.
  virtual bool drops_copy_on_read() const { return false; }
  // Extra statistics for the FARMEM_STATS line: "" or `"name":{...}`.
  virtual std::string stats_json() const { return {}; }
  // One entry per memory server when there are several (a pool), from counters
  // kept as pieces are written and dropped: no round trip. Empty for one
  // server, which the runtime shows with its own far and written bytes.
  virtual std::vector<ServerBytes> per_server() const { return {}; }

  // fork(): before it, arrange for the child to read far memory as it is now
  // (returns false if this transport cannot); after it, keep or adopt that.
  virtual bool fork_prepare() { return false; }
  virtual void fork_parent() {}
  virtual void fork_child() {}
};

// The transport named by cfg.backend (transport/connect.cc). With cfg.lazy_connect
// (the preload shim) any but rdma starts on the first transfer; otherwise it
// connects now. Throws farmem::Error.
std::unique_ptr<Transport> connect(const Config& cfg);
// The unit, in bytes, of the ranges cfg.backend's transport carries (tcp's and
// dpdk's wire unit, file's O_DIRECT block; 1 for shm and rdma): what the
// compressed tier rounds its pieces up to (at least 256).
std::uint32_t io_unit(const Config& cfg);
// True when backend starts with a scheme farmem knows (shm, tcp://, redis://, ...;
// the one table of them is in connect.cc). Whether it works is connect's to say.
bool names_backend(const std::string& backend);
// "shm, tcp://HOST:PORT, ...": the forms of every backend, for messages.
std::string backend_forms();
// Empty when `uri` can be a pool member (all but shm); else why not, and the fix.
std::string member_refusal(const std::string& uri);
// One server of a pool (tcp://, dpdk:// or file://), connected now. Throws farmem::Error
// naming the server, or member_refusal() for a URI that cannot be a member.
std::unique_ptr<Transport> connect_member(const Config& cfg, const MemberOptions& member);
// Checks that cfg.backend can be used (connects and disconnects; for shm, finds
// the server binary); throws farmem::Error naming the problem.
void probe(const Config& cfg);

}  // namespace farmem::net
