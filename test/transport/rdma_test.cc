// The device-independent logic of the rdma:// transport: URI and knob parsing,
// the connection private data (round trips, padding, malformed and random
// input), the token's challenge and response over two connects (a proof,
// a wrong token, a replay, a stale or forged challenge), selective-signaling
// accounting (which cookies complete when a signaled request completes), and,
// when built with rdma-core, the chained ibv_send_wr lists. No device needed.
#include <catch2/catch.hpp>

#include <algorithm>
#include <map>
#include <random>
#include <set>

#include "farmem/runtime.hpp"
#include "farmem_build_config.h"
#include "transport/rdma/rdma_logic.hpp"
#if FARMEM_HAVE_RDMA
#include "transport/rdma/rdma_verbs.hpp"
#include "transport/rdma/rdma_wr.hpp"
#endif

namespace rd = farmem::net::rdma;
namespace wire = farmem::net::wire;
using farmem::Error;

TEST_CASE("rdma URIs parse, and bad ones say what is wrong") {
  auto e = rd::parse_uri("rdma://10.0.0.1:7000", false, "FARMEM_BACKEND");
  CHECK(e.host == "10.0.0.1");
  CHECK(e.port == 7000);
  CHECK(e.uri == "rdma://10.0.0.1:7000");
  e = rd::parse_uri("rdma://[fe80::1]:9", false, "FARMEM_BACKEND");
  CHECK(e.host == "fe80::1");
  CHECK(e.port == 9);
  CHECK(rd::parse_uri("rdma://0.0.0.0:0", true, "--listen").port == 0);
  CHECK_THROWS_WITH(rd::parse_uri("rdma://h:0", false, "FARMEM_BACKEND"), Catch::Contains("port must be 1-65535"));
  CHECK_THROWS_WITH(rd::parse_uri("rdma://h:65536", true, "--listen"), Catch::Contains("--listen rdma://h:65536: port must be 0-65535"));
  CHECK_THROWS_WITH(rd::parse_uri("rdma://h:-1", true, "--listen"), Catch::Contains("port must be"));
  CHECK_THROWS_WITH(rd::parse_uri("rdma://h:7x", false, "FARMEM_BACKEND"), Catch::Contains("port must be"));
  CHECK_THROWS_WITH(rd::parse_uri("rdma://h: 7", false, "FARMEM_BACKEND"), Catch::Contains("port must be"));
  CHECK_THROWS_WITH(rd::parse_uri("rdma://host", false, "FARMEM_BACKEND"),
                    Catch::Contains("FARMEM_BACKEND=rdma://host is not rdma://HOST:PORT"));
  CHECK_THROWS_WITH(rd::parse_uri("rdma://:7000", false, "FARMEM_BACKEND"), Catch::Contains("not rdma://HOST:PORT"));
  CHECK_THROWS_WITH(rd::parse_uri("rdma://h:", false, "FARMEM_BACKEND"), Catch::Contains("not rdma://HOST:PORT"));
  CHECK_THROWS_WITH(rd::parse_uri("tcp://h:1", false, "FARMEM_BACKEND"), Catch::Contains("not rdma://HOST:PORT"));
  CHECK_THROWS_WITH(rd::parse_uri("rdma://fe80::1:9", false, "FARMEM_BACKEND"), Catch::Contains("in brackets"));
  CHECK_THROWS_WITH(rd::parse_uri("rdma://[fe80::1:9", false, "FARMEM_BACKEND"), Catch::Contains("in brackets"));
}

TEST_CASE("rdma tuning knobs: defaults, ranges, and the signal interval fits the queue") {
  rd::Tuning t = rd::parse_tuning(nullptr, nullptr);
  CHECK(t.queue_depth == 512);
  CHECK(t.signal_every == 16);
  t = rd::parse_tuning("64", "32");
  CHECK(t.queue_depth == 64);
  CHECK(t.signal_every == 32);
  t = rd::parse_tuning("", "1");
  CHECK(t.queue_depth == 512);
  CHECK(t.signal_every == 1);
  CHECK_THROWS_WITH(rd::parse_tuning("8", nullptr), Catch::Contains("FARMEM_RDMA_QUEUE_DEPTH='8' is out of range; use 16 to 16384"));
  CHECK_THROWS_WITH(rd::parse_tuning("lots", nullptr), Catch::Contains("FARMEM_RDMA_QUEUE_DEPTH"));
  CHECK_THROWS_WITH(rd::parse_tuning(nullptr, "0"), Catch::Contains("FARMEM_RDMA_SIGNAL_EVERY='0'"));
  CHECK_THROWS_WITH(rd::parse_tuning(nullptr, "-4"), Catch::Contains("FARMEM_RDMA_SIGNAL_EVERY"));
  CHECK_THROWS_WITH(rd::parse_tuning("64", "33"), Catch::Contains("exceeds half of FARMEM_RDMA_QUEUE_DEPTH"));
}

TEST_CASE("connect request private data: round trip, padding, and rejection of bad input") {
  rd::ConnectRequest r;
  r.kind = rd::ConnKind::NewSession;
  r.capacity = 3ull << 30;
  r.nonce[0] = 7;
  r.nonce[15] = 9;
  auto b = rd::encode(r);
  static_assert(sizeof(b) == 56, "fits an IB/RoCE connect request through rdma_cm");
  rd::ConnectRequest got;
  std::string why;
  REQUIRE(rd::decode(b.data(), b.size(), &got, &why) == wire::Errc::Ok);
  CHECK(got.kind == rd::ConnKind::NewSession);
  CHECK(got.capacity == r.capacity);
  CHECK(got.session == 0);
  CHECK(got.nonce == r.nonce);
  CHECK_FALSE(got.proven);
  r.proven = true;
  r.proof[3] = 1;
  auto pb = rd::encode(r);
  REQUIRE(rd::decode(pb.data(), pb.size(), &got, &why) == wire::Errc::Ok);
  CHECK(got.proven);
  CHECK(got.proof == r.proof);
  CHECK(got.kind == rd::ConnKind::NewSession);
  r.proven = false;
  pb = rd::encode(r);  // a proof without the flag: not written
  REQUIRE(rd::decode(pb.data(), pb.size(), &got, &why) == wire::Errc::Ok);
  pb[43] = 1;          // and not accepted
  CHECK(rd::decode(pb.data(), pb.size(), &got, &why) == wire::Errc::BadMessage);
  CHECK(why == "a proof in a first connect");
  r.proof = {};

  std::vector<std::uint8_t> padded(b.begin(), b.end());
  padded.resize(92, 0);  // what some CMs deliver
  CHECK(rd::decode(padded.data(), padded.size(), &got, nullptr) == wire::Errc::Ok);

  rd::ConnectRequest a;
  a.kind = rd::ConnKind::Attach;
  a.session = 0x1234567890abcdefull;
  auto ab = rd::encode(a);
  REQUIRE(rd::decode(ab.data(), ab.size(), &got, nullptr) == wire::Errc::Ok);
  CHECK(got.kind == rd::ConnKind::Attach);
  CHECK(got.session == a.session);

  CHECK(rd::decode(b.data(), 55, &got, &why) == wire::Errc::BadMessage);
  CHECK(why == "connect request too short");
  CHECK(rd::decode(nullptr, 0, &got, nullptr) == wire::Errc::BadMessage);
  auto bad = b;
  bad[0] ^= 1;
  CHECK(rd::decode(bad.data(), bad.size(), &got, &why) == wire::Errc::BadMessage);
  bad = b;
  bad[4] = 1;  // version 1: the token's digest, no challenge
  CHECK(rd::decode(bad.data(), bad.size(), &got, &why) == wire::Errc::Version);
  CHECK(why == "the client speaks rdma protocol version 1, this server 2; use the same farmem release on both sides");
  bad = b;
  bad[6] = 9;  // kind
  CHECK(rd::decode(bad.data(), bad.size(), &got, &why) == wire::Errc::BadMessage);
  CHECK(why == "unknown connection kind");
  r.session = 5;  // a new session must not name one
  auto ns = rd::encode(r);
  CHECK(rd::decode(ns.data(), ns.size(), &got, nullptr) == wire::Errc::BadMessage);
  r.session = 0;
  r.capacity = 0;
  ns = rd::encode(r);
  CHECK(rd::decode(ns.data(), ns.size(), &got, nullptr) == wire::Errc::BadMessage);
  a.session = 0;
  ab = rd::encode(a);
  CHECK(rd::decode(ab.data(), ab.size(), &got, &why) == wire::Errc::BadMessage);
  CHECK(why == "attach without a session id");
}

TEST_CASE("random and mutated private data never crash the decoders") {
  std::mt19937_64 rng(11);
  rd::ConnectRequest r;
  r.capacity = 1 << 30;
  auto seed = rd::encode(r);
  int ok = 0;
  for (int i = 0; i < 200000; ++i) {
    std::vector<std::uint8_t> m;
    if (i % 2) {
      m.assign(seed.begin(), seed.end());
      for (int k = 0; k < 1 + static_cast<int>(rng() % 4); ++k) m[rng() % m.size()] ^= static_cast<std::uint8_t>(1u << (rng() % 8));
    } else {
      m.resize(rng() % 200);
      for (auto& x : m) x = static_cast<std::uint8_t>(rng());
    }
    rd::ConnectRequest c;
    if (rd::decode(m.data(), m.size(), &c, nullptr) == wire::Errc::Ok) {
      ++ok;
      CHECK(((c.kind == rd::ConnKind::NewSession && c.session == 0 && c.capacity > 0) ||
             (c.kind == rd::ConnKind::Attach && c.session != 0)));
    }
    rd::Accept acc;
    if (rd::decode(m.data(), m.size(), &acc, nullptr)) CHECK(acc.capacity % 4096 == 0);
    rd::Reject rej;
    if (rd::decode(m.data(), m.size(), &rej)) CHECK(rej.message.size() <= rd::kRejectMessageMax);
    rd::Challenge ch;
    rd::decode(m.data(), m.size(), &ch);
  }
  CHECK(ok > 0);  // flips in the nonce or capacity leave a valid request
}

TEST_CASE("accept private data: round trip and validation") {
  rd::Accept a{42, 1ull << 30, 0x7f0000000000ull, 0xabcd, {}};
  a.proof[31] = 5;
  auto b = rd::encode(a);
  static_assert(sizeof(b) <= 196, "fits an IB/RoCE connect reply");
  rd::Accept got;
  std::string why;
  REQUIRE(rd::decode(b.data(), b.size(), &got, &why));
  CHECK(got.session == 42);
  CHECK(got.capacity == a.capacity);
  CHECK(got.remote_addr == a.remote_addr);
  CHECK(got.rkey == a.rkey);
  CHECK(got.proof == a.proof);
  std::vector<std::uint8_t> padded(b.begin(), b.end());
  padded.resize(196, 0);
  CHECK(rd::decode(padded.data(), padded.size(), &got, nullptr));
  CHECK_FALSE(rd::decode(b.data(), rd::kAcceptBytes - 1, &got, &why));
  auto bad = b;
  bad[1] ^= 0xff;
  CHECK_FALSE(rd::decode(bad.data(), bad.size(), &got, &why));
  CHECK(why.find("magic") != std::string::npos);
  CHECK_FALSE(rd::decode(rd::encode(rd::Accept{0, 4096, 1, 1, {}}).data(), rd::kAcceptBytes, &got, nullptr));        // no session
  CHECK_FALSE(rd::decode(rd::encode(rd::Accept{1, 100, 1, 1, {}}).data(), rd::kAcceptBytes, &got, nullptr));         // capacity not pages
  CHECK_FALSE(rd::decode(rd::encode(rd::Accept{1, 4096, 0, 1, {}}).data(), rd::kAcceptBytes, &got, nullptr));        // no address
  CHECK_FALSE(rd::decode(rd::encode(rd::Accept{1, 8192, ~0ull - 4095, 1, {}}).data(), rd::kAcceptBytes, &got, nullptr));  // wraps
}

TEST_CASE("the token is proven over two connects, never sent; wrong, replayed, stale and forged proofs fail") {
  constexpr std::uint64_t kEpoch = rd::ConnectAuth::kEpochNs, t0 = 1000 * kEpoch + 5;
  rd::ConnectAuth server("s3cret-token");
  const rd::ConnectRequest first = rd::first_connect(rd::ConnKind::NewSession, 0, 1ull << 30);
  CHECK(first.nonce != rd::ClientNonce{});
  CHECK(rd::first_connect(rd::ConnKind::NewSession, 0, 1).nonce != first.nonce);  // fresh each time
  auto wire_first = rd::encode(first);
  // The token is nowhere in what goes out.
  const std::string token = "s3cret-token";
  CHECK(std::search(wire_first.begin(), wire_first.end(), token.begin(), token.end()) == wire_first.end());

  // The challenge goes out as a reject and comes back intact; a reject decoder does not take it for a refusal.
  const rd::Challenge ch = server.challenge(first, t0);
  CHECK_FALSE(ch.no_token);
  auto cb = rd::encode(ch);
  static_assert(sizeof(cb) == 148, "an IB/RoCE reject's private data");
  rd::Challenge got_ch;
  REQUIRE(rd::decode(cb.data(), cb.size(), &got_ch));
  CHECK(got_ch.nonce == ch.nonce);
  rd::Reject not_a_refusal;
  CHECK_FALSE(rd::decode(cb.data(), cb.size(), &not_a_refusal));
  CHECK(server.challenge(first, t0 + 1).nonce == ch.nonce);  // the server keeps nothing: it derives it again

  // The right token: accepted, and the server's proof convinces the client.
  const rd::ConnectRequest second = rd::second_connect(first, ch, token);
  rd::ConnectRequest decoded;
  auto sb = rd::encode(second);
  REQUIRE(rd::decode(sb.data(), sb.size(), &decoded, nullptr) == wire::Errc::Ok);
  rd::ServerProof proof{};
  std::string why;
  REQUIRE(server.verify(decoded, t0 + kEpoch / 2, &proof, &why) == wire::Errc::Ok);
  rd::Accept acc{1, 4096, 1, 1, proof};
  CHECK(rd::server_proven(first, ch, token, acc));
  CHECK_FALSE(rd::server_proven(first, ch, "another", acc));
  acc.proof[0] ^= 1;
  CHECK_FALSE(rd::server_proven(first, ch, token, acc));

  // The same second connect again (recorded and replayed): refused.
  CHECK(server.verify(decoded, t0 + kEpoch / 2, &proof, &why) == wire::Errc::BadToken);
  CHECK(why == "a replayed connect request");

  // A wrong token, a changed field, a challenge from two epochs ago, a forged challenge: refused.
  auto refused = [&](const rd::ConnectRequest& r, std::uint64_t now) {
    std::string w;
    return server.verify(r, now, nullptr, &w) == wire::Errc::BadToken && w.find("wrong or missing token") == 0;
  };
  const rd::ConnectRequest f2 = rd::first_connect(rd::ConnKind::Attach, 77, 0);
  const rd::Challenge c2 = server.challenge(f2, t0);
  CHECK(refused(rd::second_connect(f2, c2, "not-the-token"), t0));
  rd::ConnectRequest moved = rd::second_connect(f2, c2, token);
  moved.session = 78;  // the proof was for session 77
  CHECK(refused(moved, t0));
  CHECK(refused(rd::second_connect(f2, c2, token), t0 + 2 * kEpoch));
  rd::Challenge forged = c2;
  forged.nonce[5] ^= 0x40;
  CHECK(refused(rd::second_connect(f2, forged, token), t0));
  // Across one epoch boundary it still works (a challenge at the end of one, the proof in the next).
  CHECK(server.verify(rd::second_connect(f2, c2, token), t0 + kEpoch, nullptr, &why) == wire::Errc::Ok);
  // A first connect where the proof was due is not a proof.
  CHECK(server.verify(rd::first_connect(rd::ConnKind::Attach, 77, 0), t0, nullptr, &why) == wire::Errc::BadMessage);

  // A server without a token says so in its challenge (a client with one refuses it), and takes any proof.
  rd::ConnectAuth open_server("");
  const rd::Challenge oc = open_server.challenge(first, t0);
  CHECK(oc.no_token);
  auto ob = rd::encode(oc);
  REQUIRE(rd::decode(ob.data(), ob.size(), &got_ch));
  CHECK(got_ch.no_token);
  CHECK(open_server.verify(rd::second_connect(first, oc, ""), t0, nullptr, &why) == wire::Errc::Ok);
  CHECK(rd::server_proven(first, oc, "", rd::Accept{}));
}

TEST_CASE("reject private data carries a code and one printable line") {
  auto b = rd::encode(rd::Reject{wire::Errc::BadToken, "wrong or missing token"});
  static_assert(sizeof(b) == 148, "an IB/RoCE reject's private data");
  rd::Reject got;
  REQUIRE(rd::decode(b.data(), b.size(), &got));
  CHECK(got.code == wire::Errc::BadToken);
  CHECK(got.message == "wrong or missing token");
  auto longer = rd::encode(rd::Reject{wire::Errc::NoCapacity, std::string(500, 'x')});
  REQUIRE(rd::decode(longer.data(), longer.size(), &got));
  CHECK(got.message == std::string(rd::kRejectMessageMax, 'x'));
  auto odd = rd::encode(rd::Reject{wire::Errc::BadMessage, "two\nlines\x01"});
  REQUIRE(rd::decode(odd.data(), odd.size(), &got));
  CHECK(got.message == "two?lines?");
  std::vector<std::uint8_t> zeros(148, 0);  // a CM-level reject (e.g. nobody listening): not ours
  CHECK_FALSE(rd::decode(zeros.data(), zeros.size(), &got));
  CHECK_FALSE(rd::decode(b.data(), 7, &got));
  CHECK_FALSE(rd::decode(nullptr, 0, &got));
}

TEST_CASE("selective signaling: every Nth and the last of a list are signaled") {
  rd::SendAccounting acct(16, 4);
  CHECK(acct.room() == 16);
  std::vector<rd::SendAccounting::Planned> p;
  for (int i = 0; i < 10; ++i) p.push_back(acct.plan(100 + i, i == 9));
  for (int i = 0; i < 10; ++i) {
    CHECK(p[i].wr_id == static_cast<std::uint64_t>(i + 1));
    CHECK(p[i].signaled == (i == 3 || i == 7 || i == 9));
  }
  CHECK(acct.room() == 6);
  CHECK(acct.outstanding() == 10);
  std::deque<std::uint64_t> done;
  CHECK(acct.retire_through(p[2].wr_id, done) == -1);  // unsignaled: no completion can carry it
  CHECK(acct.retire_through(999, done) == -1);
  CHECK(acct.retire_through(p[3].wr_id, done) == 4);  // retires 100..103
  CHECK(done == std::deque<std::uint64_t>{100, 101, 102, 103});
  CHECK(acct.room() == 10);
  CHECK(acct.retire_through(p[3].wr_id, done) == -1);  // already retired
  CHECK(acct.retire_through(p[9].wr_id, done) == 6);  // a later completion implies the earlier ones
  CHECK(done.size() == 10);
  CHECK(done.back() == 109);
  CHECK(acct.outstanding() == 0);
  CHECK(acct.room() == 16);
  // The counter runs on across lists: the next signal comes 4 after the last one.
  auto q = acct.plan(1, false);
  CHECK_FALSE(q.signaled);
  CHECK(q.wr_id == 11);
}

TEST_CASE("selective signaling: random lists complete every cookie once, in order, without a stuck queue") {
  std::mt19937_64 rng(5);
  for (unsigned every : {1u, 3u, 8u, 32u}) {
    rd::SendAccounting acct(64, every);
    std::deque<std::uint64_t> signaled;  // outstanding signaled wr_ids, in order: the "CQ to be"
    std::deque<std::uint64_t> done;
    std::uint64_t next_cookie = 0;
    for (int round = 0; round < 5000; ++round) {
      // Post a list that fits, like submit() does (the last one signaled).
      unsigned n = std::min<unsigned>(acct.room(), 1 + static_cast<unsigned>(rng() % 40));
      for (unsigned i = 0; i < n; ++i) {
        auto pl = acct.plan(next_cookie++, i + 1 == n);
        if (pl.signaled) signaled.push_back(pl.wr_id);
      }
      // A full queue must hold a signaled request, or nothing would ever free it.
      if (acct.room() == 0) REQUIRE_FALSE(signaled.empty());
      if (acct.outstanding()) REQUIRE_FALSE(signaled.empty());  // every list ends signaled
      // The device completes some signaled requests, in posting order.
      unsigned k = static_cast<unsigned>(rng() % (signaled.size() + 1));
      for (unsigned i = 0; i < k; ++i) {
        REQUIRE(acct.retire_through(signaled.front(), done) > 0);
        signaled.pop_front();
      }
    }
    while (!signaled.empty()) {
      REQUIRE(acct.retire_through(signaled.front(), done) > 0);
      signaled.pop_front();
    }
    CHECK(acct.outstanding() == 0);
    REQUIRE(done.size() == next_cookie);
    for (std::uint64_t i = 0; i < next_cookie; ++i) REQUIRE(done[i] == i);
  }
}

TEST_CASE("a pool member whose connection dies: every outstanding cookie fails once, in order") {
  rd::SendAccounting acct(32, 4);
  std::deque<std::uint64_t> done;
  std::uint64_t last_signaled = 0;
  for (std::uint64_t c = 0; c < 20; ++c) {
    auto p = acct.plan(c, c == 9 || c == 19);  // two lists
    if (c == 9) last_signaled = p.wr_id;
  }
  REQUIRE(acct.retire_through(last_signaled, done) == 10);  // the first list completed
  acct.abandon(done);  // then the server died
  REQUIRE(done.size() == 20);
  for (std::uint64_t c = 0; c < 20; ++c) CHECK(done[c] == c);
  CHECK(acct.outstanding() == 0);
  CHECK(acct.room() == 32);
  CHECK(acct.plan(99, true).signaled);  // usable again (a new connection)
}

TEST_CASE("a pool member's staging slots: one per transfer in flight, given back at completion") {
  rd::StagingSlots slots(4);
  long a = slots.take({100, nullptr, 4096});
  long b = slots.take({101, &slots, 2048});
  REQUIRE(a == 0);
  REQUIRE(b == 1);
  CHECK(slots.take({102, nullptr, 4097}) == -1);  // more than a slot: never
  CHECK(slots.take({103, nullptr, 512}) == 2);
  CHECK(slots.take({104, nullptr, 512}) == 3);
  CHECK(slots.take({105, nullptr, 512}) == -1);  // all in flight: the queue pair reaps first
  CHECK(slots.in_use() == 4);
  rd::StagingSlots::Entry e = slots.release(1);
  CHECK(e.cookie == 101);
  CHECK(e.read_dst == &slots);
  CHECK(e.len == 2048);
  CHECK(slots.take({106, nullptr, 4096}) == 1);  // the freed slot, again
  // Random traffic: a slot is never held twice, every entry comes back as taken.
  std::mt19937_64 rng(9);
  rd::StagingSlots many(64);
  std::map<long, std::uint64_t> held;
  for (std::uint64_t c = 0; c < 20000; ++c) {
    if (held.size() < 64 && rng() % 3 != 0) {
      const long s = many.take({c, nullptr, 4096});
      REQUIRE(s >= 0);
      REQUIRE(held.emplace(s, c).second);
    } else if (!held.empty()) {
      auto it = std::next(held.begin(), static_cast<long>(rng() % held.size()));
      REQUIRE(many.release(static_cast<unsigned>(it->first)).cookie == it->second);
      held.erase(it);
    }
    REQUIRE(many.in_use() == held.size());
  }
}

#if FARMEM_HAVE_RDMA
TEST_CASE("a submit's transfers become one chained ibv_send_wr list") {
  rd::SendAccounting acct(64, 4);
  std::vector<rd::Transfer> t;
  for (int i = 0; i < 6; ++i)
    t.push_back({i % 2 == 1, 0x10000u + 4096u * i, 4096, 77, 8192ull * i, 500u + i});
  std::vector<ibv_send_wr> wrs(6);
  std::vector<ibv_sge> sges(6);
  ibv_send_wr* head = rd::build_send_list(t.data(), t.size(), acct, 0x7f0000000000ull, 0xbeef, wrs.data(), sges.data());
  REQUIRE(head == &wrs[0]);
  int n = 0;
  std::set<std::uint64_t> ids;
  for (ibv_send_wr* w = head; w; w = w->next, ++n) {
    const rd::Transfer& x = t[n];
    CHECK(w->opcode == (x.write ? IBV_WR_RDMA_WRITE : IBV_WR_RDMA_READ));
    CHECK(w->num_sge == 1);
    CHECK(w->sg_list == &sges[n]);
    CHECK(w->sg_list->addr == x.local);
    CHECK(w->sg_list->length == 4096);
    CHECK(w->sg_list->lkey == 77);
    CHECK(w->wr.rdma.remote_addr == 0x7f0000000000ull + x.remote_off);
    CHECK(w->wr.rdma.rkey == 0xbeef);
    CHECK(((w->send_flags & IBV_SEND_SIGNALED) != 0) == (n == 3 || n == 5));
    ids.insert(w->wr_id);
  }
  CHECK(n == 6);
  CHECK(ids.size() == 6);
  CHECK(acct.outstanding() == 6);
  // The last signaled one completing retires the whole list, cookies in order.
  std::deque<std::uint64_t> done;
  CHECK(acct.retire_through(wrs[5].wr_id, done) == 6);
  CHECK(done == std::deque<std::uint64_t>{500, 501, 502, 503, 504, 505});
}
#endif

TEST_CASE("rdma:// at start-up: without rdma-core or without a device, one line naming the fix") {
  farmem::Config c;
  c.local_mem_bytes = 16 << 20;
  c.far_mem_bytes = 1 << 30;
  c.backend = "rdma://192.0.2.1:7000";
#if FARMEM_HAVE_RDMA
  if (!rd::no_device_reason().empty()) {
    CHECK_THROWS_WITH(farmem::init(c), Catch::Contains("rdma://192.0.2.1:7000: no RDMA device found") &&
                                           Catch::Contains("rdma link add rxe0 type rxe"));
  } else {
    WARN("an RDMA device exists: the no-device error path is not exercised here (test/cli/rdma_test.sh runs end to end)");
  }
#else
  CHECK_THROWS_WITH(farmem::init(c), Catch::Contains("built without rdma-core") && Catch::Contains("-Drdma=enabled"));
#endif
  c.backend = "rdma://192.0.2.1";
  CHECK_THROWS_WITH(farmem::init(c), Catch::Contains("is not rdma://HOST:PORT"));
  CHECK_FALSE(farmem::initialized());
}

TEST_CASE("rdma:// pool members: accepted as members, and without a device one line naming the server") {
  farmem::Config c;
  c.local_mem_bytes = 16 << 20;
  c.far_mem_bytes = 1 << 30;
  c.backend = "rdma://192.0.2.1:7000,rdma://192.0.2.2:7000";
  c.redundancy = "replicas:2";
#if FARMEM_HAVE_RDMA
  if (!rd::no_device_reason().empty()) {
    CHECK_THROWS_WITH(farmem::init(c), Catch::Contains("rdma://192.0.2.1:7000") &&
                                           Catch::Contains("no RDMA device found") &&
                                           !Catch::Contains("cannot be a pool member"));
  } else {
    WARN("an RDMA device exists: the no-device error path is not exercised here (test/cli/rdma_test.sh runs a pool of rdma servers)");
  }
#else
  CHECK_THROWS_WITH(farmem::init(c), Catch::Contains("built without rdma-core") && Catch::Contains("tcp:// pool members"));
#endif
  c.backend = "rdma://192.0.2.1,rdma://192.0.2.2:7000";
  CHECK_THROWS_WITH(farmem::init(c), Catch::Contains("is not rdma://HOST:PORT"));
  CHECK_FALSE(farmem::initialized());
}
