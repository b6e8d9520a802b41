// The dpdk:// protocol logic that does not need a device: URI parsing, frame
// encoding and validation, the client's request table and the server's
// duplicate window (see dpdk_proto.hpp).
#include "transport/dpdk/dpdk_proto.hpp"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "farmem/runtime.hpp"

namespace farmem::net::dpdk {

namespace {

unsigned parse_uint(const std::string& uri, const std::string& key, const std::string& v, unsigned lo,
                    unsigned hi) {
  char* end = nullptr;
  unsigned long n = std::strtoul(v.c_str(), &end, 10);
  if (v.empty() || *end || n < lo || n > hi)
    throw Error("FARMEM_BACKEND / --listen " + uri + ": " + key + "=" + v + " must be " + std::to_string(lo) +
                "-" + std::to_string(hi));
  return static_cast<unsigned>(n);
}

bool parse_mac(const std::string& s, std::uint8_t out[6]) {
  unsigned v[6];
  char tail;
  if (std::sscanf(s.c_str(), "%2x:%2x:%2x:%2x:%2x:%2x%c", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &tail) != 6)
    return false;
  for (int i = 0; i < 6; ++i) out[i] = static_cast<std::uint8_t>(v[i]);
  return true;
}

}  // namespace

Uri parse_uri(const std::string& text, bool server) {
  const std::string forms = server ? "dpdk://memif/SOCKET-PATH[?clients=N&queues=Q] or dpdk://port/N[?queues=Q]"
                                   : "dpdk://memif/SOCKET-PATH[?id=N&queues=Q] or dpdk://port/N?peer=MAC";
  auto bad = [&](const std::string& why) -> Error {
    return Error((server ? "--listen " : "FARMEM_BACKEND=") + text + ": " + why + "; use " + forms);
  };
  const std::string prefix = "dpdk://";
  if (text.rfind(prefix, 0) != 0) throw bad("not a dpdk:// URI");
  std::string rest = text.substr(prefix.size()), query;
  if (auto q = rest.find('?'); q != std::string::npos) {
    query = rest.substr(q + 1);
    rest = rest.substr(0, q);
  }
  Uri u;
  u.text = text;
  if (rest.rfind("memif/", 0) == 0) {
    u.memif = true;
    u.socket = rest.substr(5);  // keeps the leading '/'
    if (u.socket.size() < 2) throw bad("no socket path after memif");
    if (u.socket.size() > 100) throw bad("the socket path is longer than 100 bytes");
    if (u.socket.find_first_of(",= ") != std::string::npos)
      throw bad("the socket path must not contain ',', '=' or spaces");
  } else if (rest.rfind("port/", 0) == 0) {
    u.memif = false;
    u.port = parse_uint(text, "port", rest.substr(5), 0, 1023);
  } else {
    throw bad("unknown device kind '" + rest.substr(0, rest.find('/')) + "'");
  }
  std::size_t pos = 0;
  while (pos < query.size()) {
    std::size_t amp = query.find('&', pos);
    std::string kv = query.substr(pos, amp == std::string::npos ? std::string::npos : amp - pos);
    pos = amp == std::string::npos ? query.size() : amp + 1;
    std::size_t eq = kv.find('=');
    if (eq == std::string::npos) throw bad("'" + kv + "' is not key=value");
    std::string k = kv.substr(0, eq), v = kv.substr(eq + 1);
    if (k == "queues") {
      u.queues = parse_uint(text, k, v, 2, kMaxQueues);
    } else if (k == "id" && u.memif && !server) {
      u.id = parse_uint(text, k, v, 0, kMaxMemifClients - 1);
    } else if (k == "clients" && u.memif && server) {
      u.clients = parse_uint(text, k, v, 1, kMaxMemifClients);
    } else if (k == "abstract" && u.memif) {
      if (v != "yes" && v != "no") throw bad("abstract must be yes or no");
      u.abstract = v == "yes";
    } else if (k == "peer" && !u.memif && !server) {
      if (!parse_mac(v, u.peer)) throw bad("peer=" + v + " is not a MAC address aa:bb:cc:dd:ee:ff");
      u.have_peer = true;
    } else {
      throw bad("unknown parameter '" + k + "'");
    }
  }
  if (!u.memif && !server && !u.have_peer) throw bad("port/N needs peer=MAC (the server prints its MAC)");
  return u;
}

Errc validate(const Header& h, bool from_server, std::string* why) {
  auto fail = [&](Errc e, const char* msg) {
    if (why) *why = msg;
    return e;
  };
  if (h.magic != kMagic) return fail(Errc::BadMessage, "bad magic");
  if (h.version != kVersion) return fail(Errc::Version, "unsupported protocol version");
  if (h.reserved != 0) return fail(Errc::BadMessage, "reserved field set");
  if (h.length > kPage) return fail(Errc::BadMessage, "payload larger than a page");
  if (h.lane >= kMaxQueues) return fail(Errc::BadMessage, "lane out of range");
  const auto op = static_cast<Op>(h.op);
  if (from_server) {
    if (op == Op::Reply) {
      if (h.status != 0) return fail(Errc::BadMessage, "reply with a status");
      if (h.length % kUnit) return fail(Errc::BadMessage, "reply payload not whole 512-byte units");
      return Errc::Ok;
    }
    if (op == Op::Error) {
      if (h.status == 0) return fail(Errc::BadMessage, "error without a code");
      return Errc::Ok;
    }
    if (op == Op::Challenge) {
      if (h.status != 0 || h.length != kChallengeBytes || h.session != 0)
        return fail(Errc::BadMessage, "malformed challenge");
      return Errc::Ok;
    }
    return fail(Errc::BadMessage, "unexpected op from the server");
  }
  if (h.status != 0) return fail(Errc::BadMessage, "request with a status");
  if (h.seq == 0) return fail(Errc::BadMessage, "seq 0");
  if (op != Op::Hello && op != Op::Prove && h.floor > h.seq) return fail(Errc::BadMessage, "floor above seq");
  switch (op) {
    case Op::Hello:
    case Op::Prove:
      if (h.length != (op == Op::Hello ? kHelloBytes : kProveBytes))
        return fail(Errc::BadMessage, op == Op::Hello ? "hello without a 32-byte nonce" : "malformed proof");
      if (h.session != 0) return fail(Errc::BadMessage, "hello with a session");
      if (h.size < 2 || h.size > kMaxQueues) return fail(Errc::BadQueues, "bad queue count");
      return Errc::Ok;
    case Op::Read:
      if (h.length != 0) return fail(Errc::BadMessage, "unexpected payload");
      if (h.size == 0 || h.size > kPage || h.size % kUnit || h.offset % kUnit)
        return fail(Errc::BadMessage, "read is not one page or aligned 512-byte units of one");
      return Errc::Ok;
    case Op::Write:
      if (h.size == 0 || h.size > kPage || h.size % kUnit || h.length != h.size || h.offset % kUnit)
        return fail(Errc::BadMessage, "write is not one page or aligned 512-byte units of one");
      return Errc::Ok;
    case Op::Discard:
      if (h.length != 0) return fail(Errc::BadMessage, "unexpected payload");
      if (h.size == 0 || h.size % kUnit || h.offset % kUnit) return fail(Errc::BadMessage, "unaligned range");
      return Errc::Ok;
    case Op::Usage:
    case Op::Ping:
    case Op::Bye:
      if (h.length != 0 || h.size != 0) return fail(Errc::BadMessage, "unexpected payload");
      return Errc::Ok;
    default:
      return fail(Errc::BadMessage, "unknown op");
  }
}

std::size_t encode(void* buf, std::size_t cap, const std::uint8_t dst[6], const std::uint8_t src[6],
                   const Header& h, const void* payload) {
  std::size_t len = kEthHeader + sizeof h + h.length;
  if (len > cap) return 0;
  auto* p = static_cast<std::uint8_t*>(buf);
  std::memcpy(p, dst, 6);
  std::memcpy(p + 6, src, 6);
  p[12] = kEtherType >> 8;  // network byte order
  p[13] = kEtherType & 0xff;
  std::memcpy(p + kEthHeader, &h, sizeof h);
  if (h.length) std::memcpy(p + kEthHeader + sizeof h, payload, h.length);
  return len;
}

Errc decode(const void* frame, std::size_t len, bool from_server, Header* h, const char** payload,
            std::string* why) {
  auto fail = [&](Errc e, const char* msg) {
    if (why) *why = msg;
    return e;
  };
  const auto* p = static_cast<const std::uint8_t*>(frame);
  if (len < kEthHeader + sizeof(Header)) return fail(Errc::BadMessage, "truncated frame");
  if (p[12] != (kEtherType >> 8) || p[13] != (kEtherType & 0xff)) return fail(Errc::BadMessage, "not our EtherType");
  std::memcpy(h, p + kEthHeader, sizeof *h);
  if (Errc e = validate(*h, from_server, why); e != Errc::Ok) return e;
  // Ethernet pads short frames, so the frame may be longer than the message.
  if (len < kEthHeader + sizeof(Header) + h->length) return fail(Errc::BadMessage, "truncated payload");
  *payload = reinterpret_cast<const char*>(p + kEthHeader + sizeof(Header));
  return Errc::Ok;
}

// ---- RequestTable ----

RequestTable::RequestTable(unsigned window, std::uint64_t first_seq)
    : slots_(window), next_seq_(first_seq), floor_(first_seq) {}

std::uint32_t RequestTable::add(Op op, std::uint64_t offset, std::uint32_t size, void* local,
                                std::uint64_t cookie) {
  std::uint64_t seq = next_seq_++;
  auto slot = static_cast<std::uint32_t>(seq % slots_.size());
  Request& r = slots_[slot];
  r = Request{};
  r.busy = true;
  r.op = op;
  r.seq = seq;
  r.offset = offset;
  r.size = size;
  r.local = local;
  r.cookie = cookie;
  ++outstanding_;
  return slot;
}

std::uint16_t RequestTable::sent(std::uint32_t slot, std::uint64_t now_ns, std::uint64_t first_rto_ns,
                                 std::uint64_t max_rto_ns) {
  Request& r = slots_[slot];
  r.rto_ns = r.attempts == 0 ? first_rto_ns : std::min(r.rto_ns * 2, max_rto_ns);
  if (r.attempts < 0xffff) ++r.attempts;
  r.sent_ns = now_ns;
  return r.attempts;
}

RequestTable::Request* RequestTable::match(std::uint32_t slot, std::uint64_t seq) {
  if (slot >= slots_.size()) return nullptr;
  Request& r = slots_[slot];
  if (!r.busy || r.seq != seq) return nullptr;
  return &r;
}

void RequestTable::complete(std::uint32_t slot) {
  slots_[slot].busy = false;
  --outstanding_;
  while (floor_ < next_seq_ && !slots_[floor_ % slots_.size()].busy) ++floor_;
}

std::size_t RequestTable::due(std::uint64_t now_ns, std::uint32_t* out, std::size_t max) const {
  std::size_t n = 0;
  for (std::uint64_t s = floor_; s < next_seq_ && n < max; ++s) {
    auto slot = static_cast<std::uint32_t>(s % slots_.size());
    const Request& r = slots_[slot];
    if (r.busy && r.seq == s && now_ns - r.sent_ns >= r.rto_ns) out[n++] = slot;
  }
  return n;
}

// ---- DedupWindow ----

DedupWindow::DedupWindow(unsigned window) : bits_((window + 63) / 64, 0), window_(window) {}

DedupWindow::Verdict DedupWindow::check(std::uint64_t seq, std::uint64_t floor) {
  if (floor > base_) {  // the client finished everything below floor: forget it
    if (floor - base_ >= window_) {
      std::fill(bits_.begin(), bits_.end(), 0);
    } else {
      for (std::uint64_t s = base_; s < floor; ++s) bits_[(s % window_) / 64] &= ~(1ull << (s % window_ % 64));
    }
    base_ = floor;
  }
  if (seq < base_) return Verdict::Stale;
  if (seq - base_ >= window_) return Verdict::Invalid;
  std::uint64_t& w = bits_[(seq % window_) / 64];
  std::uint64_t bit = 1ull << (seq % window_ % 64);
  if (w & bit) return Verdict::Duplicate;
  w |= bit;
  return Verdict::Execute;
}

}  // namespace farmem::net::dpdk
