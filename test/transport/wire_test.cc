// The wire-protocol validator: well-formed messages pass, and random or
// mutated headers (a bounded fuzz run) are rejected without trusting them;
// and the token's challenge and response (transport/auth.cc).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstring>
#include <random>

#include "transport/auth.hpp"
#include "transport/wire.hpp"

namespace wire = farmem::net::wire;

TEST_CASE("well-formed requests and replies validate") {
  CHECK(wire::validate(wire::make(wire::Op::Hello, 0, 1 << 30, 0, 0), false, nullptr) == wire::Errc::Ok);
  CHECK(wire::validate(wire::make(wire::Op::Hello, 0, 1 << 30, 0, 5), false, nullptr) != wire::Errc::Ok);  // a token: v1
  CHECK(wire::validate(wire::make(wire::Op::Prove, 0, 0, 0, 64), false, nullptr) == wire::Errc::Ok);
  CHECK(wire::validate(wire::make(wire::Op::Prove, 0, 0, 0, 12), false, nullptr) != wire::Errc::Ok);
  CHECK(wire::validate(wire::make(wire::Op::Challenge, 0, 0, 0, 32), true, nullptr) == wire::Errc::Ok);
  CHECK(wire::validate(wire::make(wire::Op::Challenge, 0, 0, 0, 32), false, nullptr) != wire::Errc::Ok);
  CHECK(wire::validate(wire::make(wire::Op::Read, 1, 8192, 4096, 0), false, nullptr) == wire::Errc::Ok);
  CHECK(wire::validate(wire::make(wire::Op::Write, 2, 0, 8192, 8192), false, nullptr) == wire::Errc::Ok);
  CHECK(wire::validate(wire::make(wire::Op::Discard, 3, 4096, 4096, 0), false, nullptr) == wire::Errc::Ok);
  // A pool's erasure-coded pieces: half and eighth pages at their own alignment.
  CHECK(wire::validate(wire::make(wire::Op::Read, 4, 2048, 2048, 0), false, nullptr) == wire::Errc::Ok);
  CHECK(wire::validate(wire::make(wire::Op::Write, 5, 512, 512, 512), false, nullptr) == wire::Errc::Ok);
  CHECK(wire::validate(wire::make(wire::Op::Read, 6, 256, 512, 0), false, nullptr) != wire::Errc::Ok);
  CHECK(wire::validate(wire::make(wire::Op::Write, 7, 0, 1000, 1000), false, nullptr) != wire::Errc::Ok);
  CHECK(wire::validate(wire::make(wire::Op::Usage, 4, 0, 0, 0), false, nullptr) == wire::Errc::Ok);
  CHECK(wire::validate(wire::make(wire::Op::Reply, 1, 0, 4096, 4096), true, nullptr) == wire::Errc::Ok);
  CHECK(wire::validate(wire::make(wire::Op::Error, 1, 0, 0, 3, 2), true, nullptr) == wire::Errc::Ok);
}

TEST_CASE("malformed headers are rejected with a reason") {
  std::string why;
  auto h = wire::make(wire::Op::Read, 1, 100, 4096, 0);  // unaligned offset
  CHECK(wire::validate(h, false, &why) == wire::Errc::BadMessage);
  CHECK(!why.empty());
  h = wire::make(wire::Op::Write, 1, 0, 4096, 8192);  // size != payload
  CHECK(wire::validate(h, false, nullptr) == wire::Errc::BadMessage);
  h = wire::make(wire::Op::Read, 1, 0, 2u << 20, 0);  // too large
  CHECK(wire::validate(h, false, nullptr) == wire::Errc::BadMessage);
  h = wire::make(wire::Op::Reply, 1, 0, 0, 0);  // replies do not come from clients
  CHECK(wire::validate(h, false, nullptr) == wire::Errc::BadMessage);
  h = wire::make(wire::Op::Read, 1, 0, 4096, 0);  // nor requests from servers
  CHECK(wire::validate(h, true, nullptr) == wire::Errc::BadMessage);
  h.magic = 0;
  CHECK(wire::validate(h, false, nullptr) == wire::Errc::BadMessage);
  h = wire::make(wire::Op::Read, 1, 0, 4096, 0);
  h.version = 9;
  CHECK(wire::validate(h, false, nullptr) == wire::Errc::Version);
}

TEST_CASE("fuzz: random and bit-flipped headers never validate into nonsense") {
  std::mt19937_64 rng(12345);
  const wire::Header seeds[] = {wire::make(wire::Op::Read, 1, 8192, 4096, 0),
                                wire::make(wire::Op::Write, 2, 0, 8192, 8192),
                                wire::make(wire::Op::Hello, 0, 1 << 30, 1, 0)};
  std::uint64_t accepted = 0;
  for (int i = 0; i < 2'000'000; ++i) {
    wire::Header h;
    if (i % 2) {
      auto* p = reinterpret_cast<unsigned char*>(&h);
      for (std::size_t k = 0; k < sizeof h; ++k) p[k] = static_cast<unsigned char>(rng());
    } else {
      h = seeds[i % 3];
      auto* p = reinterpret_cast<unsigned char*>(&h);
      p[rng() % sizeof h] ^= static_cast<unsigned char>(1u << (rng() % 8));
    }
    bool from_server = rng() & 1;
    if (wire::validate(h, from_server, nullptr) != wire::Errc::Ok) continue;
    ++accepted;
    // Whatever passes must be safe to act on.
    REQUIRE(h.magic == wire::kMagic);
    REQUIRE(h.length <= wire::kMaxPayload);
    auto op = static_cast<wire::Op>(h.op);
    if (!from_server && (op == wire::Op::Read || op == wire::Op::Write || op == wire::Op::Discard)) {
      REQUIRE(h.size % wire::kUnit == 0);
      REQUIRE(h.offset % wire::kUnit == 0);
      REQUIRE(h.size > 0);
    }
    if (!from_server && op == wire::Op::Write) REQUIRE(h.size == h.length);
  }
  CHECK(accepted > 0);
}

TEST_CASE("the token is proven over both nonces, and nothing else passes") {
  namespace auth = farmem::net::auth;
  unsigned char sn[auth::kNonce], cn[auth::kNonce], mac[auth::kMac];
  auth::random_nonce(sn);
  auth::random_nonce(cn);
  CHECK(std::memcmp(sn, cn, auth::kNonce) != 0);
  auth::prove("s3cret", true, sn, cn, mac);
  CHECK(auth::check("s3cret", true, sn, cn, mac));
  CHECK_FALSE(auth::check("s3cret", false, sn, cn, mac));  // a client's proof is not a server's
  CHECK_FALSE(auth::check("s3cres", true, sn, cn, mac));   // another token
  CHECK_FALSE(auth::check("s3cret", true, cn, sn, mac));   // other nonces (a replay to a new challenge)
  CHECK(std::search(mac, mac + auth::kMac, "s3cret", "s3cret" + 6) == mac + auth::kMac);
  CHECK(auth::check("", true, sn, cn, (auth::prove("", true, sn, cn, mac), mac)));
}

TEST_CASE("a peer of another protocol version is refused naming both versions") {
  const std::string c = wire::version_refusal(1, "client");
  CHECK(c == "farmem protocol version 1 is not supported: this farmem-server speaks version 2; run the same farmem "
             "release on the client and the server");
  CHECK(wire::version_refusal(3, "server").find("version 3 is not supported: this client speaks version 2") !=
        std::string::npos);
}
