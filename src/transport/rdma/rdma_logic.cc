// The device-independent half of the rdma:// transport (see rdma_logic.hpp):
// URI and knob parsing, SHA-256 for the token digest, private-data encoding
// and validation, and selective-signaling accounting.
#include "transport/rdma/rdma_logic.hpp"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "farmem/runtime.hpp"

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

constexpr std::uint32_t kSha256K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

std::uint32_t rotr(std::uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

void sha256_block(std::uint32_t h[8], const std::uint8_t* b) {
  std::uint32_t w[64];
  for (int i = 0; i < 16; ++i)
    w[i] = (std::uint32_t{b[4 * i]} << 24) | (std::uint32_t{b[4 * i + 1]} << 16) |
           (std::uint32_t{b[4 * i + 2]} << 8) | b[4 * i + 3];
  for (int i = 16; i < 64; ++i) {
    std::uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
    std::uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
    w[i] = w[i - 16] + s0 + w[i - 7] + s1;
  }
  std::uint32_t a = h[0], bb = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
  for (int i = 0; i < 64; ++i) {
    std::uint32_t t1 = hh + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + kSha256K[i] + w[i];
    std::uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & bb) ^ (a & c) ^ (bb & c));
    hh = g;
    g = f;
    f = e;
    e = d + t1;
    d = c;
    c = bb;
    bb = a;
    a = t1 + t2;
  }
  h[0] += a;
  h[1] += bb;
  h[2] += c;
  h[3] += d;
  h[4] += e;
  h[5] += f;
  h[6] += g;
  h[7] += hh;
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

Digest sha256(const void* data, std::size_t len) {
  std::uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                        0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  const auto* p = static_cast<const std::uint8_t*>(data);
  std::size_t full = len / 64;
  for (std::size_t i = 0; i < full; ++i) sha256_block(h, p + 64 * i);
  std::uint8_t tail[128] = {};
  std::size_t rem = len % 64;
  if (rem) std::memcpy(tail, p + 64 * full, rem);
  tail[rem] = 0x80;
  std::size_t tail_len = rem < 56 ? 64 : 128;
  std::uint64_t bits = static_cast<std::uint64_t>(len) * 8;
  for (int i = 0; i < 8; ++i) tail[tail_len - 1 - i] = static_cast<std::uint8_t>(bits >> (8 * i));
  sha256_block(h, tail);
  if (tail_len == 128) sha256_block(h, tail + 64);
  Digest d;
  for (int i = 0; i < 8; ++i)
    for (int j = 0; j < 4; ++j) d[4 * i + j] = static_cast<std::uint8_t>(h[i] >> (24 - 8 * j));
  return d;
}

Digest token_digest(const std::string& token) {
  if (token.empty()) return Digest{};
  return sha256(token.data(), token.size());
}

bool digest_equal(const Digest& a, const Digest& b) {
  std::uint8_t diff = 0;
  for (std::size_t i = 0; i < a.size(); ++i) diff |= static_cast<std::uint8_t>(a[i] ^ b[i]);
  return diff == 0;
}

// Connect request: magic u32, version u16, kind u16, session u64, capacity u64, token digest [32].
std::array<std::uint8_t, kConnectBytes> encode(const ConnectRequest& r) {
  std::array<std::uint8_t, kConnectBytes> b{};
  put32(&b[0], kMagic);
  put16(&b[4], kVersion);
  put16(&b[6], static_cast<std::uint16_t>(r.kind));
  put64(&b[8], r.session);
  put64(&b[16], r.capacity);
  std::memcpy(&b[24], r.token.data(), r.token.size());
  return b;
}

wire::Errc decode(const void* data, std::size_t len, ConnectRequest* out, std::string* why) {
  auto fail = [&](wire::Errc e, const char* msg) {
    if (why) *why = msg;
    return e;
  };
  const auto* b = static_cast<const std::uint8_t*>(data);
  if (!b || len < kConnectBytes) return fail(wire::Errc::BadMessage, "connect request too short");
  if (get32(b) != kMagic) return fail(wire::Errc::BadMessage, "not a farmem connect request (bad magic)");
  if (get16(b + 4) != kVersion) return fail(wire::Errc::Version, "unsupported protocol version");
  ConnectRequest r;
  std::uint16_t kind = get16(b + 6);
  r.session = get64(b + 8);
  r.capacity = get64(b + 16);
  std::memcpy(r.token.data(), b + 24, r.token.size());
  if (kind == static_cast<std::uint16_t>(ConnKind::NewSession)) {
    if (r.session != 0) return fail(wire::Errc::BadMessage, "new session with a session id");
    if (r.capacity == 0) return fail(wire::Errc::BadMessage, "new session asks for no memory");
  } else if (kind == static_cast<std::uint16_t>(ConnKind::Attach)) {
    if (r.session == 0) return fail(wire::Errc::BadMessage, "attach without a session id");
  } else {
    return fail(wire::Errc::BadMessage, "unknown connection kind");
  }
  r.kind = static_cast<ConnKind>(kind);
  if (out) *out = r;
  return wire::Errc::Ok;
}

// Accept: magic u32, version u16, 0 u16, session u64, capacity u64, remote_addr u64, rkey u32, 0 u32.
std::array<std::uint8_t, kAcceptBytes> encode(const Accept& a) {
  std::array<std::uint8_t, kAcceptBytes> b{};
  put32(&b[0], kMagic);
  put16(&b[4], kVersion);
  put64(&b[8], a.session);
  put64(&b[16], a.capacity);
  put64(&b[24], a.remote_addr);
  put32(&b[32], a.rkey);
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
  if (a.session == 0) return fail("no session id");
  if (a.capacity == 0 || a.capacity % 4096) return fail("bad capacity");
  if (a.remote_addr == 0 || a.remote_addr + a.capacity < a.remote_addr) return fail("bad remote address");
  if (out) *out = a;
  return true;
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
  if (!b || len < 8 || get32(b) != kMagic || get16(b + 4) != kVersion) return false;
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
