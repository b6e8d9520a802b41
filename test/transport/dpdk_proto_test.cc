// The dpdk:// protocol without a device: URIs, frame encode/decode and
// validation (plus a bounded fuzz of the decoder), the client's request table
// (seq numbers, slots, retransmission timers, late duplicate replies) and the
// server's duplicate window.
#include <catch2/catch.hpp>

#include <cstring>
#include <random>
#include <vector>

#include "farmem/runtime.hpp"
#include "transport/dpdk/dpdk_proto.hpp"

using namespace farmem::net::dpdk;

namespace {
const std::uint8_t kA[6] = {2, 0, 0, 0, 0, 1}, kB[6] = {2, 0, 0, 0, 0, 2};

std::vector<char> frame(const Header& h, const void* payload) {
  std::vector<char> buf(kFrameMax);
  std::size_t n = encode(buf.data(), buf.size(), kA, kB, h, payload);
  buf.resize(n);
  return buf;
}
}  // namespace

TEST_CASE("dpdk URIs parse, and bad ones name the problem") {
  Uri u = parse_uri("dpdk://memif/tmp/x.sock?id=3&queues=4", false);
  CHECK(u.memif);
  CHECK(u.socket == "/tmp/x.sock");
  CHECK(u.id == 3);
  CHECK(u.queues == 4);
  CHECK(u.abstract);
  u = parse_uri("dpdk://memif/run/farmem.sock?clients=2&abstract=no", true);
  CHECK(u.clients == 2);
  CHECK(!u.abstract);
  CHECK(u.queues == 8);
  u = parse_uri("dpdk://port/1?peer=aa:bb:cc:00:11:22", false);
  CHECK(!u.memif);
  CHECK(u.port == 1);
  CHECK(u.peer[0] == 0xaa);
  CHECK(u.peer[5] == 0x22);
  CHECK_THROWS_WITH(parse_uri("dpdk://memif/", false), Catch::Contains("no socket path"));
  CHECK_THROWS_WITH(parse_uri("dpdk://memif/x?queues=1", false), Catch::Contains("queues=1 must be 2-64"));
  CHECK_THROWS_WITH(parse_uri("dpdk://memif/x?clients=2", false), Catch::Contains("unknown parameter 'clients'"));
  CHECK_THROWS_WITH(parse_uri("dpdk://memif/x?id=2", true), Catch::Contains("unknown parameter 'id'"));
  CHECK_THROWS_WITH(parse_uri("dpdk://port/0", false), Catch::Contains("peer=MAC"));
  CHECK_THROWS_WITH(parse_uri("dpdk://port/0?peer=zz", false), Catch::Contains("not a MAC"));
  CHECK_THROWS_WITH(parse_uri("dpdk://nic/0", false), Catch::Contains("unknown device kind"));
  CHECK_THROWS_WITH(parse_uri("dpdk://memif/a,b", false), Catch::Contains("must not contain"));
  CHECK_THROWS_AS(parse_uri("tcp://x:1", false), farmem::Error);
}

TEST_CASE("frames round-trip and carry the page") {
  std::vector<char> page(kPage);
  for (std::size_t i = 0; i < page.size(); ++i) page[i] = static_cast<char>(i * 7);
  Header h = make(Op::Write, 42, 7, 8192, kPage, kPage);
  h.floor = 5;
  h.slot = 7;
  h.lane = 3;
  h.attempt = 2;
  auto f = frame(h, page.data());
  REQUIRE(f.size() == kEthHeader + sizeof(Header) + kPage);
  CHECK(static_cast<unsigned char>(f[12]) == 0x88);
  CHECK(static_cast<unsigned char>(f[13]) == 0xB5);
  Header got;
  const char* payload = nullptr;
  REQUIRE(decode(f.data(), f.size(), false, &got, &payload, nullptr) == Errc::Ok);
  CHECK(std::memcmp(&got, &h, sizeof h) == 0);
  CHECK(std::memcmp(payload, page.data(), kPage) == 0);
  // Ethernet padding after a short message is fine.
  Header r = make(Op::Reply, 42, 7, 0, 0, 0);
  auto fr = frame(r, nullptr);
  fr.resize(fr.size() + 20, 0);
  CHECK(decode(fr.data(), fr.size(), true, &got, &payload, nullptr) == Errc::Ok);
  // Too small a buffer: encode refuses.
  char small[100];
  CHECK(encode(small, sizeof small, kA, kB, h, page.data()) == 0);
}

TEST_CASE("malformed and truncated frames are rejected with a reason") {
  std::vector<char> page(kPage, 1);
  std::string why;
  Header got;
  const char* payload;
  Header h = make(Op::Write, 1, 3, 4096, kPage, kPage);
  auto f = frame(h, page.data());
  // truncated payload, truncated header, wrong EtherType
  CHECK(decode(f.data(), f.size() - 1, false, &got, &payload, &why) == Errc::BadMessage);
  CHECK(why == "truncated payload");
  CHECK(decode(f.data(), 30, false, &got, &payload, &why) == Errc::BadMessage);
  auto g = f;
  g[13] = 0;
  CHECK(decode(g.data(), g.size(), false, &got, &payload, &why) == Errc::BadMessage);
  // header fields
  auto bad = [&](Header x, bool from_server) { return validate(x, from_server, &why); };
  Header x = h;
  x.magic = 0;
  CHECK(bad(x, false) == Errc::BadMessage);
  x = h;
  x.version = 9;
  CHECK(bad(x, false) == Errc::Version);
  x = make(Op::Read, 1, 3, 100, kPage, 0);
  CHECK(bad(x, false) == Errc::BadMessage);  // unaligned
  x = make(Op::Read, 1, 3, 512, 1024, 0);
  CHECK(bad(x, false) == Errc::Ok);  // a piece of a page
  x = make(Op::Read, 1, 3, 512, 1000, 0);
  CHECK(bad(x, false) == Errc::BadMessage);  // not whole units
  x = make(Op::Write, 1, 3, 2048, 2048, 2048);
  CHECK(bad(x, false) == Errc::Ok);
  x = make(Op::Write, 1, 3, 2048, 2048, 4096);
  CHECK(bad(x, false) == Errc::BadMessage);  // payload is not the size
  x = make(Op::Read, 1, 3, 0, 2 * kPage, 0);
  CHECK(bad(x, false) == Errc::BadMessage);  // more than a page
  x = make(Op::Write, 1, 3, 0, kPage, 100);
  CHECK(bad(x, false) == Errc::BadMessage);
  x = make(Op::Read, 1, 0, 0, kPage, 0);
  CHECK(bad(x, false) == Errc::BadMessage);  // seq 0
  x = make(Op::Read, 1, 3, 0, kPage, 0);
  x.floor = 4;
  CHECK(bad(x, false) == Errc::BadMessage);  // floor above seq
  x = make(Op::Hello, 0, 1, 1 << 20, 1, kHelloBytes);
  CHECK(bad(x, false) == Errc::BadQueues);
  x = make(Op::Hello, 0, 1, 1 << 20, 8, kHelloBytes);
  CHECK(bad(x, false) == Errc::Ok);
  x = make(Op::Hello, 0, 1, 1 << 20, 8, 5);  // version 1 carried the token here: no longer
  CHECK(bad(x, false) == Errc::BadMessage);
  x = make(Op::Prove, 0, 2, 1 << 20, 8, kProveBytes);
  CHECK(bad(x, false) == Errc::Ok);
  x = make(Op::Prove, 0, 2, 1 << 20, 8, kProveBytes - 1);
  CHECK(bad(x, false) == Errc::BadMessage);
  x = make(Op::Prove, 7, 2, 1 << 20, 8, kProveBytes);
  CHECK(bad(x, false) == Errc::BadMessage);  // a proof names no session
  x = make(Op::Challenge, 0, 1, 0, 1, kChallengeBytes);
  CHECK(bad(x, true) == Errc::Ok);
  CHECK(bad(x, false) == Errc::BadMessage);  // challenges come from servers
  x = make(Op::Challenge, 0, 1, 0, 0, 16);
  CHECK(bad(x, true) == Errc::BadMessage);
  x = make(Op::Reply, 1, 3, 0, 0, 0);
  CHECK(bad(x, false) == Errc::BadMessage);  // replies do not come from clients
  CHECK(bad(make(Op::Read, 1, 3, 0, kPage, 0), true) == Errc::BadMessage);
  x = make(Op::Error, 1, 3, 0, 0, 5);
  CHECK(bad(x, true) == Errc::BadMessage);  // error without a code
  x = make(Op::Reply, 1, 3, 0, 0, 100);
  CHECK(bad(x, true) == Errc::BadMessage);  // reply payload not whole units
  x = make(Op::Reply, 1, 3, 0, 0, 1024);
  CHECK(bad(x, true) == Errc::Ok);
  x = make(Op::Usage, 1, 3, 0, 0, 0);
  x.lane = kMaxQueues;
  CHECK(bad(x, false) == Errc::BadMessage);
}

TEST_CASE("the decoder survives random and mutated frames (bounded fuzz)") {
  std::mt19937_64 rng(11);
  std::vector<char> page(kPage, 3);
  std::vector<std::vector<char>> seeds = {frame(make(Op::Write, 1, 2, 0, kPage, kPage), page.data()),
                                          frame(make(Op::Read, 1, 2, 0, kPage, 0), nullptr),
                                          frame(make(Op::Hello, 0, 1, 1 << 30, 8, kHelloBytes), page.data()),
                                          frame(make(Op::Prove, 0, 2, 1 << 30, 8, kProveBytes), page.data()),
                                          frame(make(Op::Reply, 1, 2, 0, kPage, kPage), page.data())};
  std::size_t accepted = 0;
  for (int i = 0; i < 300000; ++i) {
    std::vector<char> f = seeds[rng() % seeds.size()];
    int flips = static_cast<int>(rng() % 6);
    for (int k = 0; k < flips; ++k) f[rng() % f.size()] ^= static_cast<char>(1u << (rng() % 8));
    if (rng() % 4 == 0) f.resize(rng() % (f.size() + 1));
    Header h;
    const char* payload = nullptr;
    for (bool from_server : {false, true}) {
      if (decode(f.data(), f.size(), from_server, &h, &payload, nullptr) == Errc::Ok) {
        ++accepted;
        // Whatever passes is safe to use: the payload lies inside the frame.
        REQUIRE(payload + h.length <= f.data() + f.size());
        REQUIRE(h.length <= kPage);
      }
    }
  }
  CHECK(accepted > 0);
}

TEST_CASE("request table: seqs, slots, matching and late duplicates") {
  RequestTable t(4);
  int a = 0, b = 0;
  std::uint32_t s1 = t.add(Op::Read, 0, kPage, &a, 100);
  std::uint32_t s2 = t.add(Op::Write, 4096, kPage, &b, 200);
  CHECK(t.at(s1).seq == 1);
  CHECK(t.at(s2).seq == 2);
  CHECK(t.floor() == 1);
  CHECK(t.match(s2, 1) == nullptr);  // right slot, wrong seq
  CHECK(t.match(99, 2) == nullptr);  // slot out of range
  REQUIRE(t.match(s2, 2) != nullptr);
  t.complete(s2);
  CHECK(t.floor() == 1);  // seq 1 still outstanding
  CHECK(t.match(s2, 2) == nullptr);  // a repeated reply to seq 2 is now stale
  t.complete(s1);
  CHECK(t.floor() == 3);
  CHECK(t.empty());
  // The slot of seq 1 is reused by seq 5: a late reply to seq 1 must not complete seq 5.
  t.add(Op::Read, 0, kPage, &a, 3);
  t.add(Op::Read, 0, kPage, &a, 4);
  std::uint32_t s5 = t.add(Op::Read, 8192, kPage, &a, 5);
  CHECK(s5 == s1);
  CHECK(t.match(s1, 1) == nullptr);
  CHECK(t.match(s5, 5) != nullptr);
  t.add(Op::Read, 0, kPage, &a, 6);
  CHECK(t.full());  // 4 outstanding: seq - floor would reach the window
}

TEST_CASE("request table: timeouts double and only expired requests are due") {
  RequestTable t(8, 100);  // numbering continues where an earlier queue pair stopped
  std::uint32_t s = t.add(Op::Read, 0, kPage, nullptr, 1);
  CHECK(t.at(s).seq == 100);
  std::uint32_t s2 = t.add(Op::Read, 4096, kPage, nullptr, 2);
  CHECK(t.sent(s, 1000, 10, 35) == 1);
  CHECK(t.sent(s2, 1005, 10, 35) == 1);
  std::uint32_t due[8];
  CHECK(t.due(1009, due, 8) == 0);
  REQUIRE(t.due(1010, due, 8) == 1);
  CHECK(due[0] == s);
  CHECK(t.sent(s, 1010, 10, 35) == 2);  // rto 20
  CHECK(t.due(1029, due, 8) == 1);      // only s2 (expired at 1015)
  CHECK(t.sent(s2, 1029, 10, 35) == 2);
  CHECK(t.due(1030, due, 8) == 1);  // s expired again
  CHECK(t.sent(s, 1030, 10, 35) == 3);  // rto 40 capped to 35
  CHECK(t.at(s).rto_ns == 35);
  CHECK(t.at(s).attempts == 3);
  t.complete(s);
  t.complete(s2);
  CHECK(t.due(1'000'000, due, 8) == 0);
}

TEST_CASE("duplicate window: execute once, re-ack duplicates, drop stale, reject out of window") {
  using V = DedupWindow::Verdict;
  DedupWindow w(8);
  CHECK(w.check(1, 1) == V::Execute);
  CHECK(w.check(2, 1) == V::Execute);
  CHECK(w.check(2, 1) == V::Duplicate);  // retransmitted write: not applied again
  CHECK(w.check(1, 1) == V::Duplicate);
  CHECK(w.check(9, 1) == V::Invalid);  // beyond base + window
  CHECK(w.check(8, 1) == V::Execute);
  CHECK(w.check(3, 3) == V::Execute);  // the client finished 1 and 2
  CHECK(w.base() == 3);
  CHECK(w.check(1, 3) == V::Stale);  // a late copy of an old write never lands
  CHECK(w.check(2, 1) == V::Stale);  // an old floor does not move the base back
  CHECK(w.check(10, 3) == V::Execute);
  CHECK(w.check(11, 11) == V::Execute);  // base jumps: bits of 3..10 forgotten
  CHECK(w.check(12, 11) == V::Execute);
  CHECK(w.check(11, 11) == V::Duplicate);
  CHECK(w.check(100, 100) == V::Execute);  // a jump beyond the window clears everything
  CHECK(w.check(101, 100) == V::Execute);
  CHECK(w.check(100, 100) == V::Duplicate);
}
