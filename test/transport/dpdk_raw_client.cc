// A raw dpdk:// client for the end-to-end test: speaks the page protocol frame
// by frame over two memif ids of a live farmem-server and checks what the
// runtime cannot show: tokens (proven by Hello, Challenge, Prove; a forged
// challenge refused; the server proving it back), isolation between sessions (another session's
// id from another link is refused), a late duplicate write never overwriting
// newer data, range checks, and a bounded fuzz run of mutated and truncated
// frames after which the server still serves and the other client's data is
// intact. Usage: dpdk_raw_client dpdk://memif/PATH TOKEN_FILE ID_A ID_B SECONDS
#include <rte_ethdev.h>
#include <rte_mbuf.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "farmem/runtime.hpp"
#include "transport/auth.hpp"
#include "transport/dpdk/dpdk_port.hpp"
#include "transport/dpdk/dpdk_proto.hpp"
#include "transport/wire.hpp"
#include "runtime/os.hpp"

using namespace farmem::net::dpdk;
using farmem::detail::now_ns;

namespace {

int fails = 0;
void check(bool ok, const std::string& what) {
  std::printf("%s %s\n", ok ? "ok  " : "FAIL", what.c_str());
  if (!ok) ++fails;
}

rte_mempool* g_pool;
constexpr unsigned kQueues = 8;  // must equal the server's (the default)
const std::uint8_t kBroadcast[6] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};

struct Answer {
  bool got = false;
  Header h{};
  std::vector<char> payload;
};

void send_raw(const Device& d, std::uint16_t q, const void* bytes, std::size_t len) {
  rte_mbuf* m = rte_pktmbuf_alloc(g_pool);
  if (!m) return;
  char* p = rte_pktmbuf_append(m, static_cast<std::uint16_t>(len));
  if (!p) {
    rte_pktmbuf_free(m);
    return;
  }
  std::memcpy(p, bytes, len);
  if (rte_eth_tx_burst(d.port, q, &m, 1) != 1) rte_pktmbuf_free(m);
}

void drain(const Device& d, std::uint16_t q) {
  rte_mbuf* b[32];
  while (std::uint16_t n = rte_eth_rx_burst(d.port, q, b, 32))
    for (std::uint16_t i = 0; i < n; ++i) rte_pktmbuf_free(b[i]);
}

// Sends one request on lane 0 and waits up to 2 s for the reply that echoes its seq.
Answer rpc(const Device& d, Header h, const void* payload = nullptr) {
  drain(d, 0);
  std::vector<char> f(kFrameMax);
  std::size_t len = encode(f.data(), f.size(), kBroadcast, d.mac, h, payload);
  send_raw(d, 0, f.data(), len);
  Answer a;
  const std::uint64_t t0 = now_ns();
  while (now_ns() - t0 < 2'000'000'000ull) {
    rte_mbuf* b[8];
    std::uint16_t n = rte_eth_rx_burst(d.port, 0, b, 8);
    for (std::uint16_t i = 0; i < n; ++i) {
      alignas(64) char scratch[kFrameMax];
      std::size_t fl;
      const void* fb = frame_bytes(b[i], scratch, &fl);
      Header r;
      const char* pl;
      if (!a.got && fb && decode(fb, fl, true, &r, &pl, nullptr) == Errc::Ok && r.seq == h.seq &&
          r.floor == h.floor && (h.session == 0 || r.session == h.session)) {
        a.got = true;
        a.h = r;
        a.payload.assign(pl, pl + r.length);
      }
      rte_pktmbuf_free(b[i]);
    }
    if (a.got) return a;
    usleep(100);
  }
  return a;
}

Header req(Op op, std::uint64_t session, std::uint64_t seq, std::uint64_t floor, std::uint64_t off,
           std::uint32_t size, std::uint32_t length) {
  Header h = make(op, session, seq, off, size, length);
  h.floor = floor;
  h.slot = static_cast<std::uint32_t>(seq % kWindow);
  h.attempt = 1;
  return h;
}

namespace auth = farmem::net::auth;

// The handshake with id `id` (its client nonce follows from the id, so a
// repeated handshake is a retransmission): Hello, the server's Challenge, then
// Prove with the proof of `token`. Returns the answer to Prove (or to Hello if
// that was not a challenge); *server_nonce gets the challenge.
Answer hello(const Device& d, const std::string& token, std::uint64_t id, unsigned queues = kQueues,
             std::string* server_nonce = nullptr, bool forge = false) {
  unsigned char cn[auth::kNonce] = {};
  std::memcpy(cn, &id, sizeof id);
  Answer c = rpc(d, req(Op::Hello, 0, 1, id, 64ull << 20, queues, kHelloBytes), cn);
  if (!c.got || static_cast<Op>(c.h.op) != Op::Challenge) return c;
  std::string sn(c.payload.begin(), c.payload.end());
  if (forge) sn[0] ^= 1;  // a challenge the server did not give
  if (server_nonce) *server_nonce = sn;
  unsigned char body[kProveBytes];
  std::memcpy(body, cn, auth::kNonce);
  std::memcpy(body + auth::kNonce, sn.data(), auth::kNonce);
  auth::prove(token, true, reinterpret_cast<const unsigned char*>(sn.data()), cn, body + 2 * auth::kNonce);
  return rpc(d, req(Op::Prove, 0, 2, id, 64ull << 20, queues, kProveBytes), body);
}

bool is_error(const Answer& a, Errc e) {
  return a.got && static_cast<Op>(a.h.op) == Op::Error && a.h.status == static_cast<std::uint32_t>(e);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 6) {
    std::fprintf(stderr, "usage: dpdk_raw_client dpdk://memif/PATH TOKEN_FILE ID_A ID_B SECONDS\n");
    return 2;
  }
  std::string base = argv[1], token;
  farmem::net::wire::read_token_file(argv[2], &token);
  const unsigned id_a = static_cast<unsigned>(std::stoul(argv[3])), id_b = static_cast<unsigned>(std::stoul(argv[4]));
  const unsigned seconds = static_cast<unsigned>(std::stoul(argv[5]));
  Device a, b;
  try {
    Uri ua = parse_uri(base + "?id=" + std::to_string(id_a), false);
    Uri ub = parse_uri(base + "?id=" + std::to_string(id_b), false);
    eal_init_once(ua, "dpdk_raw_client");
    g_pool = make_pool("raw", 1024);
    a = open_device(ua, false, id_a, g_pool);
    b = open_device(ub, false, id_b, g_pool);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dpdk_raw_client: %s\n", e.what());
    return 1;
  }
  for (int i = 0; i < 500 && !(link_up(a.port) && link_up(b.port)); ++i) usleep(10000);
  check(link_up(a.port) && link_up(b.port), "both memif links up");

  check(is_error(hello(a, "nope", 11), Errc::BadToken), "wrong token refused (BadToken)");
  check(is_error(hello(a, "", 12), Errc::BadToken) || token.empty(), "missing token refused (BadToken)");
  check(is_error(hello(a, token, 16, kQueues, nullptr, true), Errc::BadToken),
        "a proof over a challenge the server did not give is refused (BadToken)");
  std::string sn;
  Answer ha = hello(a, token, 13, kQueues, &sn), hb = hello(b, token, 14);
  check(ha.got && static_cast<Op>(ha.h.op) == Op::Reply && ha.h.floor == 13, "hello accepted, nonce echoed");
  unsigned char cn13[auth::kNonce] = {13};
  check(ha.payload.size() == kProofReplyBytes && !token.empty() &&
            auth::check(token, false, reinterpret_cast<const unsigned char*>(sn.data()), cn13,
                        reinterpret_cast<const unsigned char*>(ha.payload.data())),
        "the server proves it holds the token");
  check(hb.got && static_cast<Op>(hb.h.op) == Op::Reply && hb.h.session != ha.h.session, "second client: its own session");
  check(is_error(hello(a, token, 15, 2), Errc::BadQueues), "a hello with another queue count is refused (BadQueues)");
  Answer again = hello(a, token, 13);
  check(again.got && again.h.session == ha.h.session, "a repeated hello (same nonce) gets the same session");
  const std::uint64_t sa = ha.h.session, sb = hb.h.session;

  std::vector<char> pab(kPage, static_cast<char>(0xAB)), pcd(kPage, static_cast<char>(0xCD)),
      pef(kPage, static_cast<char>(0xEF)), p77(kPage, 0x77), zero(kPage, 0);
  check(rpc(a, req(Op::Write, sa, 2, 2, 0, kPage, kPage), pab.data()).h.op == static_cast<std::uint16_t>(Op::Reply),
        "write acknowledged");
  Answer r = rpc(a, req(Op::Read, sa, 3, 3, 0, kPage, 0));
  check(r.got && r.payload == pab, "client reads its own page back");
  r = rpc(b, req(Op::Read, sb, 2, 2, 0, kPage, 0));
  check(r.got && r.payload == zero, "another client sees only its own (zero) memory");
  check(is_error(rpc(b, req(Op::Read, sa, 3, 3, 0, kPage, 0)), Errc::NoSession),
        "naming another client's session from another link is refused (NoSession)");
  check(is_error(rpc(a, req(Op::Read, sa, 4, 4, 1ull << 30, kPage, 0)), Errc::OutOfRange),
        "read beyond the session's capacity refused (OutOfRange)");
  // Writes seq 5 then 6 to one page; a late copy of seq 5 arrives afterwards.
  rpc(a, req(Op::Write, sa, 5, 5, 0, kPage, kPage), pcd.data());
  rpc(a, req(Op::Write, sa, 6, 5, 0, kPage, kPage), pef.data());
  Answer dup = rpc(a, req(Op::Write, sa, 5, 5, 0, kPage, kPage), pcd.data());
  check(dup.got && static_cast<Op>(dup.h.op) == Op::Reply, "a repeated write is acknowledged again");
  r = rpc(a, req(Op::Read, sa, 7, 5, 0, kPage, 0));
  check(r.got && r.payload == pef, "a late duplicate write does not overwrite newer data");
  Answer stale = rpc(a, req(Op::Write, sa, 5, 8, 0, kPage, kPage), pcd.data());
  check(!stale.got, "a write below the client's floor is dropped unanswered");
  check(is_error(rpc(a, req(Op::Read, sa, 9 + kWindow, 9, 0, kPage, 0)), Errc::BadMessage),
        "a seq beyond the window is refused");
  rpc(b, req(Op::Write, sb, 3, 3, 4096, kPage, kPage), p77.data());

  // Bounded fuzz on link A: mutated, truncated and random frames on both lanes.
  std::mt19937_64 rng(5);
  std::vector<std::vector<char>> seeds;
  auto add_seed = [&](Header h, const void* pl) {
    std::vector<char> f(kFrameMax);
    f.resize(encode(f.data(), f.size(), kBroadcast, a.mac, h, pl));
    seeds.push_back(f);
  };
  add_seed(req(Op::Write, sa, 20, 20, 8192, kPage, kPage), pab.data());
  add_seed(req(Op::Read, sa, 21, 20, 0, kPage, 0), nullptr);
  std::vector<char> nonces(kProveBytes, 7);
  add_seed(req(Op::Hello, 0, 1, 99, 1 << 20, kQueues, kHelloBytes), nonces.data());
  add_seed(req(Op::Prove, 0, 2, 99, 1 << 20, kQueues, kProveBytes), nonces.data());
  add_seed(req(Op::Discard, sa, 22, 20, 0, kPage, 0), nullptr);
  add_seed(req(Op::Usage, sa, 23, 20, 0, 0, 0), nullptr);
  std::size_t sent = 0;
  const std::uint64_t end = now_ns() + seconds * 1'000'000'000ull;
  while (now_ns() < end) {
    std::vector<char> f;
    if (rng() % 8 == 0) {
      f.resize(14 + rng() % 200);
      for (auto& c : f) c = static_cast<char>(rng());
    } else {
      f = seeds[rng() % seeds.size()];
      for (int k = static_cast<int>(rng() % 6); k > 0; --k)
        f[14 + rng() % (f.size() - 14)] ^= static_cast<char>(1u << (rng() % 8));
      if (rng() % 4 == 0) f.resize(14 + rng() % (f.size() - 13));
    }
    if (f.size() < 60) f.resize(60, 0);
    send_raw(a, static_cast<std::uint16_t>(rng() % kQueues), f.data(), f.size());
    ++sent;
    if (sent % 64 == 0) {
      for (unsigned q = 0; q < kQueues; ++q) drain(a, static_cast<std::uint16_t>(q));
      usleep(200);
    }
  }
  usleep(300000);  // let the server answer what is still queued, then forget it
  for (unsigned q = 0; q < kQueues; ++q) drain(a, static_cast<std::uint16_t>(q));
  Answer h2 = hello(a, token, 1000);
  check(h2.got && static_cast<Op>(h2.h.op) == Op::Reply, "server healthy after " + std::to_string(sent) + " fuzz frames");
  r = rpc(a, req(Op::Read, h2.h.session, 5000, 5000, 0, kPage, 0));
  check(r.got && static_cast<Op>(r.h.op) == Op::Reply && r.payload.size() == kPage, "and serves reads");
  r = rpc(b, req(Op::Read, sb, 4, 4, 4096, kPage, 0));
  check(r.got && r.payload == p77, "the other client's data is intact after fuzzing");
  rpc(a, req(Op::Bye, h2.h.session, 5001, 5001, 0, 0, 0));
  rpc(b, req(Op::Bye, sb, 5, 5, 0, 0, 0));
  return fails ? 1 : 0;
}
