// The device-independent half of the rdma:// transport (see rdma_logic.hpp):
// URI and knob parsing, private-data encoding and validation, the token's
// challenge and response over two connects, and selective-signaling accounting.
#include "transport/rdma/rdma_logic.hpp"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include <openssl/crypto.h>

#include "farmem/runtime.hpp"
#include "transport/auth.hpp"

namespace farmem::net::rdma {
namespace {

void put16(std::uint8_t* p, std::uint16_t v) {
  for (int i = 0; i < 2; ++i) p[i] = static_cast<std::uint8_t>(v >> (8 * i));
}
void put32(std::uint8_t* p, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<std::uint8_t>(v >> (8 * i));
}
void put64(std::uint8_t* p, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<std::uint8_t>(v >> (8 * i));
}
std::uint16_t get16(const std::uint8_t* p) { return static_cast<std::uint16_t>(p[0] | (p[1] << 8)); }
std::uint32_t get32(const std::uint8_t* p) {
  std::uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}
std::uint64_t get64(const std::uint8_t* p) {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

unsigned parse_knob(const char* name, const char* v, unsigned def, unsigned lo, unsigned hi) {
  if (!v || !*v) return def;
  char* end = nullptr;
  errno = 0;
  unsigned long x = std::strtoul(v, &end, 10);
  if (*v == '-' || errno || *end || x < lo || x > hi)
    throw Error(std::string(name) + "='" + v + "' is out of range; use " + std::to_string(lo) + " to " +
                std::to_string(hi));
  return static_cast<unsigned>(x);
}

}  // namespace

Endpoint parse_uri(const std::string& uri, bool allow_port0, const std::string& what) {
  const std::string prefix = "rdma://";
  const std::string form = what + (what.rfind("--", 0) == 0 ? " " : "=") + uri;
  if (uri.rfind(prefix, 0) != 0) throw Error(form + " is not rdma://HOST:PORT");
  std::string rest = uri.substr(prefix.size());
  std::size_t colon = rest.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == rest.size())
    throw Error(form + " is not rdma://HOST:PORT");
  std::string host = rest.substr(0, colon), port = rest.substr(colon + 1);
  if (host.front() == '[') {
    if (host.size() < 3 || host.back() != ']') throw Error(form + " is not rdma://HOST:PORT ([IPv6] in brackets)");
    host = host.substr(1, host.size() - 2);
  } else if (host.find(':') != std::string::npos) {
    throw Error(form + ": write an IPv6 host in brackets, rdma://[ADDR]:PORT");
  }
  char* end = nullptr;
  long p = std::strtol(port.c_str(), &end, 10);
  long lo = allow_port0 ? 0 : 1;
  if (*end || !std::isdigit(static_cast<unsigned char>(port[0])) || p < lo || p > 65535)
    throw Error(form + ": port must be " + std::to_string(lo) + "-65535");
  return {host, static_cast<std::uint16_t>(p), uri};
}

Tuning parse_tuning(const char* queue_depth, const char* signal_every) {
  Tuning t;
  t.queue_depth = parse_knob("FARMEM_RDMA_QUEUE_DEPTH", queue_depth, t.queue_depth, 16, 16384);
  t.signal_every = parse_knob("FARMEM_RDMA_SIGNAL_EVERY", signal_every, t.signal_every, 1, 16384);
  // An unsignaled request frees its slot only when a later signaled one
  // completes; a signal at least every half queue keeps the queue moving.
  if (t.signal_every > t.queue_depth / 2)
    throw Error("FARMEM_RDMA_SIGNAL_EVERY=" + std::to_string(t.signal_every) +
                " exceeds half of FARMEM_RDMA_QUEUE_DEPTH (" + std::to_string(t.queue_depth) +
                "); lower it or raise the queue depth");
  return t;
}

// Connect request: magic u32, version u16, kind u16 (0x100: the second connect,
// with a proof), session u64, capacity u64, client nonce [16], proof [16].
constexpr std::uint16_t kProven = 0x100;

std::array<std::uint8_t, kConnectBytes> encode(const ConnectRequest& r) {
  std::array<std::uint8_t, kConnectBytes> b{};
  put32(&b[0], kMagic);
  put16(&b[4], kVersion);
  put16(&b[6], static_cast<std::uint16_t>(static_cast<std::uint16_t>(r.kind) | (r.proven ? kProven : 0)));
  put64(&b[8], r.session);
  put64(&b[16], r.capacity);
  std::memcpy(&b[24], r.nonce.data(), r.nonce.size());
  if (r.proven) std::memcpy(&b[40], r.proof.data(), r.proof.size());
  return b;
}

wire::Errc decode(const void* data, std::size_t len, ConnectRequest* out, std::string* why) {
  auto fail = [&](wire::Errc e, const std::string& msg) {
    if (why) *why = msg;
    return e;
  };
  const auto* b = static_cast<const std::uint8_t*>(data);
  if (!b || len < kConnectBytes) return fail(wire::Errc::BadMessage, "connect request too short");
  if (get32(b) != kMagic) return fail(wire::Errc::BadMessage, "not a farmem connect request (bad magic)");
  if (get16(b + 4) != kVersion)
    return fail(wire::Errc::Version, "the client speaks rdma protocol version " + std::to_string(get16(b + 4)) +
                                         ", this server " + std::to_string(kVersion) +
                                         "; use the same farmem release on both sides");
  ConnectRequest r;
  const std::uint16_t kind = get16(b + 6) & ~kProven;
  r.proven = (get16(b + 6) & kProven) != 0;
  r.session = get64(b + 8);
  r.capacity = get64(b + 16);
  std::memcpy(r.nonce.data(), b + 24, r.nonce.size());
  std::memcpy(r.proof.data(), b + 40, r.proof.size());
  if (kind == static_cast<std::uint16_t>(ConnKind::NewSession)) {
    if (r.session != 0) return fail(wire::Errc::BadMessage, "new session with a session id");
    if (r.capacity == 0) return fail(wire::Errc::BadMessage, "new session asks for no memory");
  } else if (kind == static_cast<std::uint16_t>(ConnKind::Attach)) {
    if (r.session == 0) return fail(wire::Errc::BadMessage, "attach without a session id");
  } else {
    return fail(wire::Errc::BadMessage, "unknown connection kind");
  }
  if (!r.proven && r.proof != ClientProof{}) return fail(wire::Errc::BadMessage, "a proof in a first connect");
  r.kind = static_cast<ConnKind>(kind);
  if (out) *out = r;
  return wire::Errc::Ok;
}

// Accept: magic u32, version u16, 0 u16, session u64, capacity u64, remote_addr u64, rkey u32, 0 u32,
// server proof [32].
std::array<std::uint8_t, kAcceptBytes> encode(const Accept& a) {
  std::array<std::uint8_t, kAcceptBytes> b{};
  put32(&b[0], kMagic);
  put16(&b[4], kVersion);
  put64(&b[8], a.session);
  put64(&b[16], a.capacity);
  put64(&b[24], a.remote_addr);
  put32(&b[32], a.rkey);
  std::memcpy(&b[40], a.proof.data(), a.proof.size());
  return b;
}

bool decode(const void* data, std::size_t len, Accept* out, std::string* why) {
  auto fail = [&](const char* msg) {
    if (why) *why = msg;
    return false;
  };
  const auto* b = static_cast<const std::uint8_t*>(data);
  if (!b || len < kAcceptBytes) return fail("accept data too short");
  if (get32(b) != kMagic) return fail("not a farmem server (bad magic)");
  if (get16(b + 4) != kVersion) return fail("unsupported protocol version");
  if (get16(b + 6) != 0 || get32(b + 36) != 0) return fail("reserved field set");
  Accept a;
  a.session = get64(b + 8);
  a.capacity = get64(b + 16);
  a.remote_addr = get64(b + 24);
  a.rkey = get32(b + 32);
  std::memcpy(a.proof.data(), b + 40, a.proof.size());
  if (a.session == 0) return fail("no session id");
  if (a.capacity == 0 || a.capacity % 4096) return fail("bad capacity");
  if (a.remote_addr == 0 || a.remote_addr + a.capacity < a.remote_addr) return fail("bad remote address");
  if (out) *out = a;
  return true;
}

// Challenge: magic u32, version u16, code u16 (kChallengeCode), flags u16 (1: no token), 0 u16, nonce [32].
std::array<std::uint8_t, kRejectBytes> encode(const Challenge& c) {
  std::array<std::uint8_t, kRejectBytes> b{};
  put32(&b[0], kMagic);
  put16(&b[4], kVersion);
  put16(&b[6], kChallengeCode);
  put16(&b[8], c.no_token ? 1 : 0);
  std::memcpy(&b[12], c.nonce.data(), c.nonce.size());
  return b;
}

bool decode(const void* data, std::size_t len, Challenge* out) {
  const auto* b = static_cast<const std::uint8_t*>(data);
  if (!b || len < 12 + ServerNonce{}.size() || get32(b) != kMagic || get16(b + 4) != kVersion ||
      get16(b + 6) != kChallengeCode || get16(b + 8) > 1 || get16(b + 10) != 0)
    return false;
  Challenge c;
  c.no_token = get16(b + 8) == 1;
  std::memcpy(c.nonce.data(), b + 12, c.nonce.size());
  if (out) *out = c;
  return true;
}

namespace {
// auth:: works on 32-byte nonces: the client's 16 are zero-extended.
std::array<unsigned char, auth::kNonce> wide(const ClientNonce& n) {
  std::array<unsigned char, auth::kNonce> w{};
  std::memcpy(w.data(), n.data(), n.size());
  return w;
}
}  // namespace

ConnectRequest first_connect(ConnKind kind, std::uint64_t session, std::uint64_t capacity) {
  ConnectRequest r;
  r.kind = kind;
  r.session = session;
  r.capacity = capacity;
  unsigned char n[auth::kNonce];
  auth::random_nonce(n);
  std::memcpy(r.nonce.data(), n, r.nonce.size());
  return r;
}

ConnectRequest second_connect(const ConnectRequest& first, const Challenge& c, const std::string& token) {
  ConnectRequest r = first;
  r.proven = true;
  unsigned char mac[auth::kMac];
  auth::prove(token, true, c.nonce.data(), wide(first.nonce).data(), mac);
  std::memcpy(r.proof.data(), mac, r.proof.size());
  return r;
}

bool server_proven(const ConnectRequest& first, const Challenge& c, const std::string& token, const Accept& a) {
  return token.empty() || auth::check(token, false, c.nonce.data(), wide(first.nonce).data(), a.proof.data());
}

ConnectAuth::ConnectAuth(std::string token) : token_(std::move(token)) { auth::random_nonce(secret_); }

ServerNonce ConnectAuth::nonce_for(const ConnectRequest& r, std::uint64_t epoch) const {
  std::uint8_t bound[16 + 2 + 8 + 8 + 8];
  std::memcpy(bound, r.nonce.data(), 16);
  put16(bound + 16, static_cast<std::uint16_t>(r.kind));
  put64(bound + 18, r.session);
  put64(bound + 26, r.capacity);
  put64(bound + 34, epoch);
  ServerNonce n;
  auth::derive_nonce(secret_, bound, sizeof bound, n.data());
  return n;
}

Challenge ConnectAuth::challenge(const ConnectRequest& r, std::uint64_t now_ns) const {
  Challenge c;
  c.nonce = nonce_for(r, now_ns / kEpochNs);
  c.no_token = token_.empty();
  return c;
}

wire::Errc ConnectAuth::verify(const ConnectRequest& r, std::uint64_t now_ns, ServerProof* proof, std::string* why) {
  const std::uint64_t epoch = now_ns / kEpochNs;
  for (auto it = used_.begin(); it != used_.end();) it = it->second + 1 < epoch ? used_.erase(it) : std::next(it);
  if (!r.proven) {
    if (why) *why = "a first connect where a proof was due";
    return wire::Errc::BadMessage;
  }
  for (std::uint64_t back = 0; back < 2 && back <= epoch; ++back) {
    const ServerNonce n = nonce_for(r, epoch - back);
    unsigned char mac[auth::kMac];
    auth::prove(token_, true, n.data(), wide(r.nonce).data(), mac);
    if (!token_.empty() && CRYPTO_memcmp(mac, r.proof.data(), r.proof.size()) != 0) continue;
    if (used_.count(r.nonce)) {
      if (why) *why = "a replayed connect request";
      return wire::Errc::BadToken;
    }
    used_[r.nonce] = epoch;
    if (proof) auth::prove(token_, false, n.data(), wide(r.nonce).data(), proof->data());
    return wire::Errc::Ok;
  }
  if (why) *why = "wrong or missing token";  // or a challenge older than a minute
  return wire::Errc::BadToken;
}

// Reject: magic u32, version u16, code u16, message (NUL-terminated, zero-padded).
std::array<std::uint8_t, kRejectBytes> encode(const Reject& r) {
  std::array<std::uint8_t, kRejectBytes> b{};
  put32(&b[0], kMagic);
  put16(&b[4], kVersion);
  put16(&b[6], static_cast<std::uint16_t>(r.code));
  std::size_t n = std::min(r.message.size(), kRejectMessageMax);
  std::memcpy(&b[8], r.message.data(), n);
  return b;
}

bool decode(const void* data, std::size_t len, Reject* out) {
  const auto* b = static_cast<const std::uint8_t*>(data);
  // Any version: an older server's refusal of our version is worth printing.
  if (!b || len < 8 || get32(b) != kMagic || get16(b + 6) == kChallengeCode) return false;
  Reject r;
  r.code = static_cast<wire::Errc>(get16(b + 6));
  std::size_t n = 0;
  std::size_t avail = std::min(len - 8, kRejectMessageMax);
  while (n < avail && b[8 + n]) ++n;
  for (std::size_t i = 0; i < n; ++i) {
    char c = static_cast<char>(b[8 + i]);
    r.message += (c >= 0x20 && c < 0x7f) ? c : '?';  // one printable line, whatever the peer sent
  }
  if (out) *out = r;
  return true;
}

SendAccounting::SendAccounting(unsigned queue_depth, unsigned signal_every)
    : depth_(queue_depth), signal_every_(signal_every ? signal_every : 1) {}

SendAccounting::Planned SendAccounting::plan(std::uint64_t cookie, bool last) {
  Planned p{next_id_++, false};
  if (++since_signal_ >= signal_every_ || last) {
    p.signaled = true;
    since_signal_ = 0;
  }
  inflight_.push_back({p.wr_id, cookie, p.signaled});
  return p;
}

long SendAccounting::retire_through(std::uint64_t wr_id, std::deque<std::uint64_t>& done) {
  if (inflight_.empty() || wr_id < inflight_.front().wr_id || wr_id > inflight_.back().wr_id) return -1;
  const Slot& s = inflight_[wr_id - inflight_.front().wr_id];  // ids are consecutive
  if (!s.signaled) return -1;
  long n = 0;
  while (!inflight_.empty() && inflight_.front().wr_id <= wr_id) {
    done.push_back(inflight_.front().cookie);
    inflight_.pop_front();
    ++n;
  }
  return n;
}

void SendAccounting::abandon(std::deque<std::uint64_t>& done) {
  for (const Slot& s : inflight_) done.push_back(s.cookie);
  inflight_.clear();
  since_signal_ = 0;
}

StagingSlots::StagingSlots(unsigned slots) : entries_(slots) {
  free_.reserve(slots);
  for (unsigned i = slots; i-- > 0;) free_.push_back(i);  // slot 0 first
}

long StagingSlots::take(const Entry& e) {
  if (free_.empty() || e.len > kSlotBytes) return -1;
  const unsigned s = free_.back();
  free_.pop_back();
  entries_[s] = e;
  return s;
}

StagingSlots::Entry StagingSlots::release(unsigned slot) {
  free_.push_back(slot);
  return entries_[slot];
}

}  // namespace farmem::net::rdma
