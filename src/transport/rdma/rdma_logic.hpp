// The device-independent half of the rdma:// transport: URI parsing, the
// tuning knobs, the connection private data the client and the server exchange
// through librdmacm (connect request, challenge, accept, reject), the token's
// challenge and response over them, and the send-queue accounting behind
// selective signaling. Nothing here touches a verbs device, so all of it is
// unit-tested on machines without one. The exchange is documented in
// docs/protocol.md ("RDMA").
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <map>
#include <string>
#include <vector>

#include "transport/wire.hpp"

namespace farmem::net::rdma {

struct Endpoint {
  std::string host;  // without [] for IPv6
  std::uint16_t port = 0;
  std::string uri;   // as given
};

// Parses rdma://HOST:PORT (HOST may be [IPv6]). `what` names the setting in the
// error ("FARMEM_BACKEND", "--listen"); port 0 is only legal for a listener.
// Throws farmem::Error.
Endpoint parse_uri(const std::string& uri, bool allow_port0, const std::string& what);

// Tuning knobs, from FARMEM_RDMA_QUEUE_DEPTH and FARMEM_RDMA_SIGNAL_EVERY.
struct Tuning {
  unsigned queue_depth = 512;  // send-queue slots per queue pair (and CQ entries)
  unsigned signal_every = 16;  // one signaled work request in this many
};
// nullptr or "" keeps a default. Throws farmem::Error naming the variable and the range.
Tuning parse_tuning(const char* queue_depth, const char* signal_every);

inline constexpr std::uint32_t kMagic = 0x44524d46;  // "FMRD"
// 2: the token is proven by challenge and response over two connects, never sent.
inline constexpr std::uint16_t kVersion = 2;
// An IB/RoCE connect request carries at most 56 bytes of private data through
// rdma_cm; a reply 196; a reject 148. The peer may see them zero-padded.
inline constexpr std::size_t kConnectBytes = 56;
inline constexpr std::size_t kAcceptBytes = 72;
inline constexpr std::size_t kRejectBytes = 148;
inline constexpr std::size_t kRejectMessageMax = kRejectBytes - 8 - 1;
// In a reject's code field: not a refusal but the server's challenge.
inline constexpr std::uint16_t kChallengeCode = 64;

enum class ConnKind : std::uint16_t {
  NewSession = 1,  // the control connection: creates the client's session (its own memory region)
  Attach = 2,      // a data queue pair (one per core) joining an existing session
};

// 16 bytes each: what fits next to the rest in a 56-byte connect request (the
// proof is HMAC-SHA256 cut to 128 bits).
using ClientNonce = std::array<std::uint8_t, 16>;
using ClientProof = std::array<std::uint8_t, 16>;
using ServerNonce = std::array<std::uint8_t, 32>;
using ServerProof = std::array<std::uint8_t, 32>;

// Every connection is two connects. The first carries a fresh client nonce
// and is refused with a Challenge (the server's nonce); the second carries the
// same fields and the client's proof, and is accepted with the server's proof.
struct ConnectRequest {
  ConnKind kind = ConnKind::NewSession;
  std::uint64_t session = 0;   // Attach: the session to join; NewSession: 0
  std::uint64_t capacity = 0;  // NewSession: bytes wanted
  ClientNonce nonce{};
  bool proven = false;  // the second connect
  ClientProof proof{};
};
std::array<std::uint8_t, kConnectBytes> encode(const ConnectRequest& r);
// Checks private data from a connect request; Ok, or why not (the server rejects with it).
wire::Errc decode(const void* data, std::size_t len, ConnectRequest* out, std::string* why);

struct Accept {
  std::uint64_t session = 0;
  std::uint64_t capacity = 0;     // bytes granted (the session's region)
  std::uint64_t remote_addr = 0;  // the region's address in the server (RDMA target)
  std::uint32_t rkey = 0;         // the region's own memory key
  ServerProof proof{};            // the server holds the token too
};
std::array<std::uint8_t, kAcceptBytes> encode(const Accept& a);
bool decode(const void* data, std::size_t len, Accept* out, std::string* why);

// The answer to a first connect, in the reject's private data.
struct Challenge {
  ServerNonce nonce{};
  bool no_token = false;  // the server requires no token (so it cannot prove one)
};
std::array<std::uint8_t, kRejectBytes> encode(const Challenge& c);
// False when the data is not a farmem challenge.
bool decode(const void* data, std::size_t len, Challenge* out);

// The client's side: a first connect with a fresh nonce; the second one with
// the proof over the server's challenge; and whether the accept proves that
// the server holds the token (always true without one).
ConnectRequest first_connect(ConnKind kind, std::uint64_t session, std::uint64_t capacity);
ConnectRequest second_connect(const ConnectRequest& first, const Challenge& c, const std::string& token);
bool server_proven(const ConnectRequest& first, const Challenge& c, const std::string& token, const Accept& a);

// The server's side. It keeps no state between a client's two connects: its
// nonce is an HMAC, under a secret of its own start, of the request's fields
// and a 30 s epoch, so it derives it again to check a proof (this epoch or the
// one before). It remembers the client nonces of accepted proofs for two
// epochs, so a recorded second connect cannot be replayed.
class ConnectAuth {
 public:
  static constexpr std::uint64_t kEpochNs = 30ull * 1000 * 1000 * 1000;
  explicit ConnectAuth(std::string token);
  Challenge challenge(const ConnectRequest& r, std::uint64_t now_ns) const;
  // Ok, with the server's proof for the accept; or BadToken and why.
  wire::Errc verify(const ConnectRequest& r, std::uint64_t now_ns, ServerProof* proof, std::string* why);

 private:
  ServerNonce nonce_for(const ConnectRequest& r, std::uint64_t epoch) const;
  std::string token_;
  std::uint8_t secret_[32];
  std::map<ClientNonce, std::uint64_t> used_;  // nonce -> the epoch it was accepted in
};

struct Reject {
  wire::Errc code = wire::Errc::BadMessage;
  std::string message;  // one line, at most kRejectMessageMax bytes
};
std::array<std::uint8_t, kRejectBytes> encode(const Reject& r);  // cuts the message to fit
// False when the data is not a farmem reject (e.g. no listener: the CM rejected).
bool decode(const void* data, std::size_t len, Reject* out);

// Selective signaling on one RC send queue. Work requests get consecutive ids
// (the wr_id); only some are signaled: every `signal_every`-th one and the last
// of each posted list. On a reliable-connected queue pair a work request
// completes only after every earlier one on its send queue, so the completion
// of a signaled request retires it and all unsignaled ones before it. Each
// posted request holds a send-queue slot until it is retired.
class SendAccounting {
 public:
  struct Planned {
    std::uint64_t wr_id;
    bool signaled;
  };

  SendAccounting(unsigned queue_depth, unsigned signal_every);
  // Slots free for new work requests.
  unsigned room() const { return depth_ - static_cast<unsigned>(inflight_.size()); }
  std::size_t outstanding() const { return inflight_.size(); }
  // Takes a slot for a request with `cookie`; `last` marks the end of a posted
  // list (always signaled, so every list completes). Needs room() > 0.
  Planned plan(std::uint64_t cookie, bool last);
  // A signaled request completed: moves the cookies of it and of every earlier
  // request to `done`, in posting order. Returns how many, or -1 if wr_id is not
  // an outstanding signaled request (a completion we cannot account for).
  long retire_through(std::uint64_t wr_id, std::deque<std::uint64_t>& done);
  // The connection is gone (a pool member's server died): moves the cookie of
  // every outstanding request to `done`, in posting order, and forgets them.
  void abandon(std::deque<std::uint64_t>& done);

 private:
  struct Slot {
    std::uint64_t wr_id;
    std::uint64_t cookie;
    bool signaled;
  };
  unsigned depth_, signal_every_;
  std::uint64_t next_id_ = 1;
  unsigned since_signal_ = 0;
  std::deque<Slot> inflight_;
};

// A pool member's queue pair stages every transfer through one registered
// buffer of its own: the pool hands its members pieces in memory that is not
// registered with the device (its scratch, the compressed and protected
// layers' buffers). Slot i is bytes [i * kSlotBytes, (i + 1) * kSlotBytes) of
// that buffer; a transfer holds its slot from queue() until its completion,
// when a read's bytes are copied to where the caller wanted them.
class StagingSlots {
 public:
  static constexpr std::size_t kSlotBytes = 4096;
  struct Entry {
    std::uint64_t cookie;  // the caller's
    void* read_dst;        // a read: where its bytes go; a write: nullptr
    std::size_t len;
  };
  explicit StagingSlots(unsigned slots);
  // A free slot for the transfer, or -1 when every slot is held.
  long take(const Entry& e);
  // The transfer in `slot` completed or failed: its entry, and the slot is free.
  Entry release(unsigned slot);
  unsigned in_use() const { return static_cast<unsigned>(entries_.size() - free_.size()); }

 private:
  std::vector<Entry> entries_;
  std::vector<unsigned> free_;
};

}  // namespace farmem::net::rdma
