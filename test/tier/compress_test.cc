// The compressed tier (src/tier/compressor, packed_store, compressed): codecs
// round-trip every kind of page, the piece allocator refills holes and gives
// empty spans back, and the transport layer keeps every page intact over a
// byte-addressed store, stores zeros as nothing, and stops the program when a
// stored piece comes back damaged. End to end it runs against real memory
// servers in the integrity and hw_region tests (FARMEM_COMPRESS) and test/cli.
#include <catch2/catch.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <algorithm>
#include <deque>
#include <map>
#include <random>
#include <vector>

#include "../../bench/page_data.hpp"
#include "farmem/runtime.hpp"
#include "tier/compressed.hpp"
#include "tier/compressor.hpp"
#include "tier/packed_store.hpp"

using namespace farmem::tier;

TEST_CASE("codecs parse, and bad ones are named") {
  CHECK(parse_compress("none").kind == CompressSpec::Kind::None);
  CHECK(parse_compress("lz4").name() == "lz4");
  CHECK(parse_compress("zstd").name() == "zstd:1");
  CHECK(parse_compress("zstd:9").name() == "zstd:9");
  for (const char* bad : {"lz5", "zstd:0", "zstd:99", "zstd:", "zstd:x", "gzip"}) {
    INFO(bad);
    CHECK_THROWS_AS(parse_compress(bad), farmem::Error);
  }
  CHECK_THROWS_WITH(parse_compress("gzip"), Catch::Contains("use none, lz4, zstd or zstd:LEVEL"));
}

TEST_CASE("every codec round-trips every kind of page, and rejects a damaged one") {
  for (const char* codec : {"lz4", "zstd", "zstd:6"}) {
    Compressor c(parse_compress(codec));
    for (auto kind : {bench::PageData::Zeros, bench::PageData::Text, bench::PageData::Ints, bench::PageData::Random}) {
      INFO(codec << " kind " << static_cast<int>(kind));
      alignas(4096) std::uint64_t page[512] = {}, back[512];
      bench::fill_page(kind, 7, page);
      alignas(4096) char out[4096];
      const std::size_t n = c.compress(page, out, sizeof out - 256);
      if (kind == bench::PageData::Random) {
        CHECK(n == 0);  // does not shrink by a unit: stored as it is
        continue;
      }
      REQUIRE(n > 0);
      CHECK(n < 2600);
      REQUIRE(c.decompress(out, n, back));
      CHECK(std::memcmp(page, back, 4096) == 0);
      out[n / 2] ^= 0x5a;
      out[n / 3] ^= 0x11;
      if (c.decompress(out, n, back)) CHECK(std::memcmp(page, back, 4096) != 0);  // the checksum catches it
      CHECK_FALSE(c.decompress(out, n - 1, back));
    }
  }
}

TEST_CASE("the piece allocator fills holes first and gives empty spans back") {
  PackedStore s(256, 1 << 20);  // 16 pieces a span, 256 remote pages
  bool sync = true;
  std::vector<std::uint64_t> three;
  for (int i = 0; i < 16; ++i) three.push_back(s.alloc(3, &sync));  // one span of 3 pages
  CHECK_FALSE(sync);
  for (int i = 0; i < 16; ++i) CHECK(three[i] == std::uint64_t(i) * 768);
  const std::uint64_t one = s.alloc(1, &sync);  // a new span of its own class
  CHECK(one == 3 * 4096);
  CHECK(s.usage().spans == 2);
  CHECK(s.usage().piece_bytes == 16 * 768 + 256);
  CHECK(s.free(three[5], 3).len == 0);
  CHECK(s.alloc(3, &sync) == three[5]);  // the hole, not a new span
  for (auto off : three) {
    PackedStore::Range r = s.free(off, 3);
    if (off != three.back()) CHECK(r.len == 0);
    else {
      CHECK((r.off == 0 && r.len == 3 * 4096));
      s.given_back(r);  // discarded by the caller, then handed back
    }
  }
  CHECK(s.usage().spans == 1);
  CHECK(s.free(three[0], 3).len == 0);  // freeing twice is ignored
  // A span given back is reused only once its discard is known to be done.
  int spans16 = 0;
  for (;;) {
    if (s.alloc(16, &sync) == UINT64_MAX) break;
    for (int i = 1; i < 16; ++i) s.alloc(16, &sync);
    ++spans16;
  }
  CHECK(sync);  // the address space is used up; the span of threes waits for its discard
  CHECK(spans16 == (256 - 4) / 16);
  CHECK(s.to_sync() == 1);
  s.synced(1);
  CHECK(s.alloc(16, &sync) == UINT64_MAX);  // three pages are too few for a span of sixteens
  CHECK_FALSE(sync);
  CHECK(s.alloc(3, &sync) == 0);  // but right for threes, before fresh space
  for (int i = 1; i < 16; ++i) CHECK(s.alloc(3, &sync) == std::uint64_t(i) * 768);
  CHECK(s.alloc(3, &sync) == std::uint64_t(244) * 4096);  // then fresh space
}

namespace {

// A byte-addressed store in this process, behind the transport interface: the
// layer under test is the compressed tier, not a server.
struct Bytes final : farmem::net::Transport {
  std::vector<unsigned char> mem = std::vector<unsigned char>(64 << 20);
  std::uint64_t written = 0, discarded = 0;
  struct Qp final : farmem::net::QueuePair {
    Bytes& b;
    std::deque<std::uint64_t> done;
    explicit Qp(Bytes& b) : b(b) {}
    void post_read(std::uint64_t off, void* local, std::size_t len, std::uint64_t cookie) override {
      REQUIRE(off + len <= b.mem.size());
      std::memcpy(local, &b.mem[off], len);
      done.push_back(cookie);
    }
    void post_write(std::uint64_t off, const void* local, std::size_t len, std::uint64_t cookie) override {
      REQUIRE(off + len <= b.mem.size());
      std::memcpy(&b.mem[off], local, len);
      b.written += len;
      done.push_back(cookie);
    }
    void submit() override {}
    std::size_t poll(farmem::net::Completion* out, std::size_t max) override {
      return farmem::net::take_completions(done, out, max);
    }
  };
  std::unique_ptr<farmem::net::QueuePair> create_qp() override { return std::make_unique<Qp>(*this); }
  void discard(std::uint64_t off, std::uint64_t len) override {
    std::memset(&mem[off], 0xdd, len);  // a discarded range must never be read again
    discarded += len;
  }
  std::uint64_t remote_usage() override { return 0; }
  void shutdown() override {}
  std::string describe() const override { return "bytes"; }
};

struct Tier {
  Bytes* bytes;
  std::unique_ptr<farmem::net::Transport> t;
  std::unique_ptr<farmem::net::QueuePair> qp;
  explicit Tier(const char* codec) {
    farmem::Config cfg;
    cfg.compress = codec;
    cfg.far_mem_bytes = 64 << 20;
    auto b = std::make_unique<Bytes>();
    bytes = b.get();
    t = compress_transport(cfg, std::move(b));
    qp = t->create_qp();
  }
  void wait_for(std::size_t n) {
    farmem::net::Completion c[64];
    std::size_t got = 0;
    while (got < n) {
      std::size_t k = qp->poll(c, 64);
      for (std::size_t i = 0; i < k; ++i) REQUIRE_FALSE(c[i].failed);
      got += k;
    }
  }
};

}  // namespace

TEST_CASE("pages written through the compressed tier come back intact, packed, zeros stored as nothing") {
  for (const char* codec : {"lz4", "zstd"}) {
    INFO(codec);
    Tier tier(codec);
    constexpr unsigned kPages = 512;
    std::vector<std::uint64_t> pages(kPages * 512);
    std::mt19937_64 rng(3);
    for (int round = 0; round < 3; ++round) {  // rewrites free the old pieces
      for (unsigned p = 0; p < kPages; ++p) {
        std::uint64_t* w = &pages[p * 512];
        std::memset(w, 0, 4096);
        if (p % 8 != 3) bench::fill_page(bench::PageData::Mixed, p * 31 + round, w);
        tier.qp->post_write(std::uint64_t{p} * 4096, w, 4096, p);
      }
      tier.qp->submit();
      tier.wait_for(kPages);
      {
        const std::string s = tier.t->stats_json();
        INFO(s);
        CHECK(s.find("\"zero_pages\":64,") != std::string::npos);
      }
      // Half the pages read back (each is then no longer stored: exclusive
      // loads), in random order; the others rewritten in the next round.
      std::vector<unsigned> order(kPages);
      for (unsigned p = 0; p < kPages; ++p) order[p] = p;
      std::shuffle(order.begin(), order.end(), rng);
      alignas(4096) std::uint64_t back[512];
      for (unsigned i = 0; i < kPages / 2; ++i) {
        const unsigned p = order[i];
        tier.qp->post_read(std::uint64_t{p} * 4096, back, 4096, p);
        tier.qp->submit();
        tier.wait_for(1);
        REQUIRE(std::memcmp(back, &pages[p * 512], 4096) == 0);
      }
      const std::string s = tier.t->stats_json();
      INFO(s);
      CHECK(s.find("\"pages\":" + std::to_string(kPages / 2) + ",") != std::string::npos);
    }
    // Stored well under the data; the random pages (10%) do not shrink.
    CHECK(tier.bytes->written < 3ull * kPages * 4096 * 3 / 4);
    tier.t->discard(0, kPages * 4096);  // everything freed: every span given back
    CHECK(tier.t->stats_json().find("\"stored_bytes\":0,") != std::string::npos);
  }
}

TEST_CASE("a damaged stored piece stops the program with one line") {
  for (const char* codec : {"lz4", "zstd"}) {
    for (bool raw : {false, true}) {
      INFO(codec << (raw ? " stored as it is" : " compressed"));
      int err[2];
      REQUIRE(pipe(err) == 0);
      pid_t pid = fork();
      REQUIRE(pid >= 0);
      if (pid == 0) {
        dup2(err[1], 2);
        Tier tier(codec);
        alignas(4096) std::uint64_t w[512] = {};
        bench::fill_page(raw ? bench::PageData::Random : bench::PageData::Text, 1, w);
        tier.qp->post_write(0, w, 4096, 1);
        tier.wait_for(1);
        for (std::size_t i = 0; i < tier.bytes->mem.size(); i += 4096)
          tier.bytes->mem[i + 100] ^= 0x40;  // one bit, wherever the piece went
        tier.qp->post_read(0, w, 4096, 1);
        tier.wait_for(1);
        _exit(0);  // not reached: the bad page must never be handed over
      }
      close(err[1]);
      char buf[1024] = {};
      ssize_t n = read(err[0], buf, sizeof buf - 1);
      close(err[0]);
      int st = 0;
      waitpid(pid, &st, 0);
      CHECK(WIFEXITED(st));
      CHECK(WEXITSTATUS(st) == 1);
      REQUIRE(n > 0);
      CHECK(std::string(buf).find("came back damaged from bytes") != std::string::npos);
    }
  }
}

// A pool's server: its "pages" are the pool's pieces (here 2 KiB, ec:2+M),
// read back as often as the pool likes, and a damaged one comes back as zeros
// (the pool's page checksum then rebuilds the page from other pieces) instead
// of stopping the program.
TEST_CASE("a pool server's pieces: compressed, kept when read, a damaged one handed up as zeros") {
  farmem::Config cfg;
  cfg.compress = "lz4";
  cfg.far_mem_bytes = 64 << 20;
  auto b = std::make_unique<Bytes>();
  Bytes* bytes = b.get();
  constexpr std::size_t kPiece = 2048;
  auto t = farmem::tier::compress_member(cfg, "tcp://127.0.0.1:1", std::move(b), kPiece);
  CHECK_FALSE(t->drops_copy_on_read());
  auto qp = t->create_qp();
  auto wait_one = [&] {
    farmem::net::Completion c;
    while (qp->poll(&c, 1) == 0) {
    }
    REQUIRE_FALSE(c.failed);
  };
  constexpr unsigned kPieces = 64;
  std::vector<std::uint64_t> data(kPieces * kPiece / 8);
  for (unsigned p = 0; p < kPieces; p += 2) bench::fill_page(bench::PageData::Text, p, &data[p * kPiece / 8]);
  for (unsigned p = 0; p < kPieces; ++p) {
    qp->post_write(std::uint64_t{p} * kPiece, &data[p * kPiece / 8], kPiece, p);
    qp->submit();
    wait_one();
  }
  CHECK(bytes->written < kPieces * kPiece * 3 / 4);
  alignas(4096) std::uint64_t back[kPiece / 8];
  for (int round = 0; round < 2; ++round)  // still there the second time
    for (unsigned p = 0; p < kPieces; ++p) {
      qp->post_read(std::uint64_t{p} * kPiece, back, kPiece, p);
      qp->submit();
      wait_one();
      REQUIRE(std::memcmp(back, &data[p * kPiece / 8], kPiece) == 0);
    }
  for (std::size_t i = 0; i < bytes->mem.size(); i += 256) bytes->mem[i + 7] ^= 0x10;  // every piece damaged
  std::memset(back, 0x55, sizeof back);
  qp->post_read(0, back, kPiece, 0);
  qp->submit();
  wait_one();
  CHECK(std::all_of(back, back + kPiece / 8, [](std::uint64_t w) { return w == 0; }));
  CHECK(t->stats_json().find("\"damaged\":1}") != std::string::npos);
}
