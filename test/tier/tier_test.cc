// The pool's placement and redundancy logic (src/tier/): scheme parsing, the
// Reed-Solomon codec against every erasure pattern, checksums, and the spread
// and stability of rendezvous placement. The pool itself runs end to end in
// test/cli/pool_test.sh against real farmem-server processes.
#include <catch2/catch.hpp>

#include <cstring>
#include <random>
#include <vector>

#include "farmem/runtime.hpp"
#include "tier/placement.hpp"
#include "tier/redundancy.hpp"

using namespace farmem::tier;

TEST_CASE("redundancy schemes parse, and bad ones are named") {
  CHECK(parse_scheme("none").pieces() == 1);
  Scheme r = parse_scheme("replicas:3");
  CHECK((r.replicas && r.k == 1 && r.m == 2 && r.piece_bytes() == 4096 && r.name() == "replicas:3"));
  Scheme e = parse_scheme("ec:4+2");
  CHECK((!e.replicas && e.k == 4 && e.m == 2 && e.piece_bytes() == 1024 && e.name() == "ec:4+2"));
  for (const char* bad : {"ec:3+1", "ec:2+0", "ec:8+8", "ec:2", "ec:+1", "replicas:0", "replicas:16", "replicas:x",
                          "raid5", "ec:2+1x"}) {
    INFO(bad);
    CHECK_THROWS_AS(parse_scheme(bad), farmem::Error);
  }
  CHECK_THROWS_WITH(parse_scheme("ec:3+1"), Catch::Contains("K must be 1, 2, 4 or 8"));
}

TEST_CASE("any K of K+M pieces rebuild the page") {
  std::mt19937_64 rng(5);
  for (const char* name : {"ec:2+1", "ec:2+2", "ec:4+2", "ec:8+3", "ec:1+2", "replicas:2"}) {
    INFO(name);
    const Scheme s = parse_scheme(name);
    Codec codec(s);
    const std::size_t pb = s.piece_bytes();
    alignas(64) unsigned char page[4096], out[4096];
    for (auto& b : page) b = static_cast<unsigned char>(rng());
    std::vector<unsigned char> pieces(s.pieces() * pb);
    std::memcpy(pieces.data(), page, s.k * pb);
    unsigned char* parity[kMaxPieces];
    for (unsigned j = 0; j < s.m; ++j) parity[j] = pieces.data() + (s.k + j) * pb;
    codec.encode(page, parity);
    // Every subset of exactly K pieces.
    unsigned tried = 0;
    for (std::uint32_t mask = 0; mask < (1u << s.pieces()); ++mask) {
      if (static_cast<unsigned>(__builtin_popcount(mask)) != s.k) continue;
      unsigned have[kMaxPieces];
      const unsigned char* from[kMaxPieces];
      unsigned n = 0;
      for (unsigned p = 0; p < s.pieces(); ++p)
        if (mask & (1u << p)) {
          have[n] = p;
          from[n++] = pieces.data() + p * pb;
        }
      std::memset(out, 0, sizeof out);
      REQUIRE(codec.decode(have, from, out));
      REQUIRE(std::memcmp(out, page, 4096) == 0);
      ++tried;
    }
    CHECK(tried > 0);
    // A changed piece decodes to another page, which the checksum catches.
    if (s.k > 1) {
      pieces[0] ^= 1;
      unsigned have[kMaxPieces];
      const unsigned char* from[kMaxPieces];
      for (unsigned p = 0; p < s.k; ++p) have[p] = p, from[p] = pieces.data() + p * pb;
      REQUIRE(codec.decode(have, from, out));
      CHECK(page_checksum(out) != page_checksum(page));
    }
  }
}

TEST_CASE("rendezvous placement spreads evenly and moves little when a server leaves") {
  constexpr unsigned kServers = 5;
  constexpr std::uint64_t kPages = 200000;
  unsigned first[kServers] = {};
  unsigned order[kMaxServers], order2[kMaxServers];
  std::uint64_t moved = 0, had_lost = 0;
  for (std::uint64_t p = 0; p < kPages; ++p) {
    REQUIRE(rank_servers(p, kServers, 0x1f, order) == kServers);
    ++first[order[0]];
    // Ranking is a function of the page: ask again, same answer.
    rank_servers(p, kServers, 0x1f, order2);
    REQUIRE(std::memcmp(order, order2, sizeof(unsigned) * kServers) == 0);
    // Without server 2: the others keep their relative order.
    REQUIRE(rank_servers(p, kServers, 0x1f & ~(1u << 2), order2) == kServers - 1);
    const bool lost = order[0] == 2 || order[1] == 2;
    had_lost += lost;
    unsigned j = 0;
    for (unsigned i = 0; i < kServers; ++i)
      if (order[i] != 2) REQUIRE(order2[j++] == order[i]);
    moved += !lost && (order2[0] != order[0] || order2[1] != order[1]);
  }
  for (unsigned s = 0; s < kServers; ++s) {
    INFO("server " << s << " first for " << first[s] << " pages");
    // 64 KiB groups: 12500 groups, about 2500 each; allow 10%.
    CHECK(first[s] > kPages / kServers * 9 / 10);
    CHECK(first[s] < kPages / kServers * 11 / 10);
  }
  CHECK(moved == 0);  // only pages that had a piece on the lost server move
  CHECK(had_lost > 0);
  // Pages of one group share a ranking: a 64 KiB run goes to the same servers.
  rank_servers(kGroupPages * 7, kServers, 0x1f, order);
  rank_servers(kGroupPages * 7 + kGroupPages - 1, kServers, 0x1f, order2);
  CHECK(std::memcmp(order, order2, sizeof(unsigned) * kServers) == 0);
}
