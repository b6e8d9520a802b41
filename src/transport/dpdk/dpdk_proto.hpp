// The dpdk:// page protocol, device-independent parts: the URI, the packet
// format (Ethernet frame, 64-byte header, at most one 4 KiB page), its
// validation, the client's table of outstanding requests (sequence numbers,
// retransmission timers, matching replies on (slot, seq)) and the server's
// per-lane duplicate window. Nothing here touches DPDK, so it is unit-tested
// everywhere. Documented in docs/protocol.md and docs/dpdk.md.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace farmem::net::dpdk {

// ---- URI ----------------------------------------------------------------

struct Uri {
  std::string text;          // as given
  bool memif = true;         // memif/PATH, else port/N (a device EAL probed)
  std::string socket;        // memif: control socket path
  bool abstract = true;      // memif: socket in the abstract namespace (DPDK's default)
  unsigned id = 0;           // memif client: interface id to connect to
  unsigned clients = 4;      // memif server: interfaces (ids 0..clients-1), one client each
  unsigned port = 0;         // port/N: ethdev port index
  std::uint8_t peer[6] = {};  // port/N client: the server's MAC address
  bool have_peer = false;
  unsigned queues = 8;  // queue pairs per port: 0 = control, 1.. = one per QueuePair
};

inline constexpr unsigned kMaxQueues = 64;
inline constexpr unsigned kMaxMemifClients = 64;

// Parses dpdk://memif/PATH[?id=N&queues=Q&clients=N&abstract=yes|no] or
// dpdk://port/N[?peer=MAC&queues=Q]. `server` selects which keys are legal.
// Throws farmem::Error naming the problem and the fix.
Uri parse_uri(const std::string& text, bool server);

// ---- Packets ------------------------------------------------------------

inline constexpr std::uint16_t kEtherType = 0x88B5;  // IEEE local experimental
inline constexpr std::uint32_t kMagic = 0x50444d46;  // "FMDP"
inline constexpr std::uint16_t kVersion = 2;  // 2: the token is proven (Hello, Challenge, Prove), never sent
inline constexpr std::uint32_t kPage = 4096;
// Reads and writes move a page, or a piece of one (a pool cuts a page in up to
// 8 for erasure coding): whole multiples of this, at offsets aligned to it.
inline constexpr std::uint32_t kUnit = 512;
inline constexpr std::uint32_t kMaxToken = 1024;
// The handshake's payloads (transport/auth.hpp: 32-byte nonces and proofs).
inline constexpr std::uint32_t kHelloBytes = 32;       // Hello: the client's nonce
inline constexpr std::uint32_t kChallengeBytes = 32;   // Challenge: the server's nonce
inline constexpr std::uint32_t kProveBytes = 96;       // Prove: client nonce, server nonce, client proof
inline constexpr std::uint32_t kProofReplyBytes = 512;  // Prove's Reply: the server's proof, padded to a unit
inline constexpr std::size_t kEthHeader = 14;

enum class Op : std::uint16_t {
  Hello = 1,    // floor: client's id for the handshake; offset: capacity; size: queues; payload: client nonce
  Read = 2,     // offset; size: a page or 512-byte units of one
  Write = 3,    // offset; size = length (as for Read); payload: the bytes
  Discard = 4,  // offset, size: 512-byte units (the whole pages inside are freed)
  Usage = 5,    // -> Reply offset = bytes held
  Ping = 6,     // heartbeat: keeps the session alive
  Bye = 7,      // the client is done: free the session now
  Prove = 8,    // as Hello, payload: client nonce | server nonce | HMAC proof of the token (auth.hpp)
  Reply = 16,   // status 0; echoes session, lane, slot, seq, attempt (Read: payload = the bytes)
  Error = 17,   // status = Errc; payload: one-line message
  Challenge = 18,  // answers Hello: payload = the server's nonce; size 1 = the server requires no token
};

enum class Errc : std::uint32_t {
  Ok = 0,
  BadMessage = 1,
  BadToken = 2,
  NoCapacity = 3,
  OutOfRange = 4,
  NoSession = 5,
  Version = 6,
  BadQueues = 7,
};

struct Header {
  std::uint32_t magic;
  std::uint16_t version;
  std::uint16_t op;
  std::uint64_t session;  // 0 in Hello
  std::uint64_t seq;      // lane sequence number of the request (never reused)
  std::uint64_t floor;    // requests: every seq below this on the lane is complete
  std::uint64_t offset;   // byte offset in the session's far memory
  std::uint32_t size;     // bytes the request covers
  std::uint32_t length;   // payload bytes after the header
  std::uint32_t slot;     // client's table slot; echoed
  std::uint16_t lane;     // queue index; echoed
  std::uint16_t attempt;  // transmission number (1 = first); echoed
  std::uint32_t status;
  std::uint32_t reserved;
};
static_assert(sizeof(Header) == 64);

inline constexpr std::size_t kFrameMax = kEthHeader + sizeof(Header) + kPage;

inline Header make(Op op, std::uint64_t session, std::uint64_t seq, std::uint64_t offset,
                   std::uint32_t size, std::uint32_t length) {
  Header h{};
  h.magic = kMagic;
  h.version = kVersion;
  h.op = static_cast<std::uint16_t>(op);
  h.session = session;
  h.seq = seq;
  h.offset = offset;
  h.size = size;
  h.length = length;
  return h;
}

// Checks a header before anything trusts it; `from_server` selects the legal ops.
Errc validate(const Header& h, bool from_server, std::string* why);

// Writes an Ethernet frame (dst, src, kEtherType, header, payload) into buf
// (cap bytes). Returns the frame length, or 0 if it does not fit.
std::size_t encode(void* buf, std::size_t cap, const std::uint8_t dst[6], const std::uint8_t src[6],
                   const Header& h, const void* payload);

// Parses a received frame: checks the EtherType, the lengths and the header.
// On Ok, *h is the header and *payload points at its h->length payload bytes.
Errc decode(const void* frame, std::size_t len, bool from_server, Header* h, const char** payload,
            std::string* why);

// ---- Client: outstanding requests ---------------------------------------

// One lane's requests in flight. seq numbers are handed out in order and never
// reused; a request lives in slot seq % window, and at most `window` requests
// are outstanding (seq - floor < window), so the server can keep a bitmap.
// A reply is accepted only if its slot still holds the same seq: a late
// duplicate reply to an earlier request is recognised and dropped.
class RequestTable {
 public:
  struct Request {
    bool busy = false;
    Op op = Op::Read;
    std::uint64_t seq = 0;
    std::uint64_t offset = 0;
    std::uint32_t size = 0;
    void* local = nullptr;  // Read: destination; Write: source (stable until completion)
    std::uint64_t cookie = 0;
    std::uint16_t attempts = 0;
    std::uint64_t sent_ns = 0;  // last transmission
    std::uint64_t rto_ns = 0;   // current timeout (doubles on each retransmission)
  };

  // first_seq: where this lane's numbering continues (a lane outlives its queue pairs).
  explicit RequestTable(unsigned window, std::uint64_t first_seq = 1);
  unsigned window() const { return static_cast<unsigned>(slots_.size()); }
  bool full() const { return next_seq_ - floor_ >= slots_.size(); }
  bool empty() const { return outstanding_ == 0; }
  unsigned outstanding() const { return outstanding_; }
  // The lowest seq still outstanding (next_seq if none).
  std::uint64_t floor() const { return floor_; }
  std::uint64_t next_seq() const { return next_seq_; }

  // Adds a request (the table must not be full); returns its slot.
  std::uint32_t add(Op op, std::uint64_t offset, std::uint32_t size, void* local, std::uint64_t cookie);
  Request& at(std::uint32_t slot) { return slots_[slot]; }
  // Records a transmission at `now_ns`; returns the attempt number to send.
  std::uint16_t sent(std::uint32_t slot, std::uint64_t now_ns, std::uint64_t first_rto_ns,
                     std::uint64_t max_rto_ns);
  // The request a reply (slot, seq) answers, or nullptr for a stale or unknown reply.
  Request* match(std::uint32_t slot, std::uint64_t seq);
  // Retires a matched request and advances the floor.
  void complete(std::uint32_t slot);
  // Slots whose timeout expired at now_ns (oldest first), at most max.
  std::size_t due(std::uint64_t now_ns, std::uint32_t* out, std::size_t max) const;

 private:
  std::vector<Request> slots_;
  std::uint64_t next_seq_ = 1, floor_ = 1;
  unsigned outstanding_ = 0;
};

// ---- Server: duplicate suppression per (session, lane) -------------------

// Remembers which seqs in [base, base + window) were executed. The client's
// floor moves base forward. Writes and discards execute once; a duplicate is
// re-acknowledged without applying it again, so a late copy of an old write
// can never overwrite newer data. Reads may execute again (current bytes).
class DedupWindow {
 public:
  enum class Verdict { Execute, Duplicate, Stale, Invalid };
  explicit DedupWindow(unsigned window = 256);
  Verdict check(std::uint64_t seq, std::uint64_t floor);
  std::uint64_t base() const { return base_; }

 private:
  std::vector<std::uint64_t> bits_;
  unsigned window_;
  std::uint64_t base_ = 1;
};

}  // namespace farmem::net::dpdk
