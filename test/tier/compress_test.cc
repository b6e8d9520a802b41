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
#include <atomic>
#include <chrono>
#include <deque>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <thread>
#include <vector>

#include "../../bench/page_data.hpp"
#include "far/test_support.hpp"
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
  for (int i = 0; i < 16; ++i) three.push_back(s.alloc(3, 0, &sync));  // one span of 3 pages
  CHECK_FALSE(sync);
  for (int i = 0; i < 16; ++i) CHECK(three[i] == std::uint64_t(i) * 768);
  const std::uint64_t one = s.alloc(1, 0, &sync);  // a new span of its own class
  CHECK(one == 3 * 4096);
  CHECK(s.usage().spans == 2);
  CHECK(s.usage().piece_bytes == 16 * 768 + 256);
  CHECK(s.free(three[5], 3).len == 0);
  CHECK(s.alloc(3, 0, &sync) == three[5]);  // the hole, not a new span
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
    if (s.alloc(16, 0, &sync) == UINT64_MAX) break;
    for (int i = 1; i < 16; ++i) s.alloc(16, 0, &sync);
    ++spans16;
  }
  CHECK(sync);  // the address space is used up; the span of threes waits for its discard
  CHECK(spans16 == (256 - 4) / 16);
  CHECK(s.to_sync() == 1);
  s.synced(1);
  CHECK(s.alloc(16, 0, &sync) == UINT64_MAX);  // three pages are too few for a span of sixteens
  CHECK_FALSE(sync);
  CHECK(s.alloc(3, 0, &sync) == 0);  // but right for threes, before fresh space
  for (int i = 1; i < 16; ++i) CHECK(s.alloc(3, 0, &sync) == std::uint64_t(i) * 768);
  CHECK(s.alloc(3, 0, &sync) == std::uint64_t(244) * 4096);  // then fresh space
}

namespace {

// A byte-addressed store in this process, behind the transport interface: the
// layer under test is the compressed tier, not a server. Queue pairs may be
// used from several threads (the compactor has its own): one lock, as a
// server serializes its memory.
struct Bytes final : farmem::net::Transport {
  std::vector<unsigned char> mem = std::vector<unsigned char>(64 << 20);
  std::uint64_t written = 0, discarded = 0;
  std::mutex mu;
  unsigned read_delay_us = 0;  // reads are done this late (at poll), as a server may
  struct Qp final : farmem::net::QueuePair {
    Bytes& b;
    std::deque<std::uint64_t> done;
    struct Read {
      std::uint64_t off;
      void* local;
      std::size_t len;
      std::uint64_t cookie;
    };
    std::vector<Read> reads;
    explicit Qp(Bytes& b) : b(b) {}
    void post_read(std::uint64_t off, void* local, std::size_t len, std::uint64_t cookie) override {
      REQUIRE(off + len <= b.mem.size());
      if (b.read_delay_us) {
        reads.push_back({off, local, len, cookie});
        return;
      }
      {
        std::lock_guard<std::mutex> g(b.mu);
        std::memcpy(local, &b.mem[off], len);
      }
      done.push_back(cookie);
    }
    void post_write(std::uint64_t off, const void* local, std::size_t len, std::uint64_t cookie) override {
      REQUIRE(off + len <= b.mem.size());
      {
        std::lock_guard<std::mutex> g(b.mu);
        std::memcpy(&b.mem[off], local, len);
        b.written += len;
      }
      done.push_back(cookie);
    }
    void submit() override {}
    std::size_t poll(farmem::net::Completion* out, std::size_t max) override {
      if (!reads.empty()) {
        std::this_thread::sleep_for(std::chrono::microseconds(b.read_delay_us));
        std::lock_guard<std::mutex> g(b.mu);
        for (const Read& r : reads) {
          std::memcpy(r.local, &b.mem[r.off], r.len);
          done.push_back(r.cookie);
        }
        reads.clear();
      }
      return farmem::net::take_completions(done, out, max);
    }
  };
  std::unique_ptr<farmem::net::QueuePair> create_qp() override { return std::make_unique<Qp>(*this); }
  void discard(std::uint64_t off, std::uint64_t len) override {
    std::lock_guard<std::mutex> g(mu);
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
  // compact_pct 0: no compactor, so what is stored is exactly what the test did.
  explicit Tier(const char* codec, unsigned compact_pct = 0) {
    farmem::Config cfg;
    cfg.compress = codec;
    cfg.far_mem_bytes = 64 << 20;
    cfg.compact_pct = compact_pct;
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
  cfg.compact_pct = 0;  // what is stored is what the test did
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
  CHECK(t->stats_json().find("\"damaged\":1,") != std::string::npos);
}

TEST_CASE("spans given back are reused once, after the mark that covers them, whoever syncs") {
  PackedStore s(256, 1 << 20);
  bool sync = false;
  std::vector<std::uint64_t> ones;
  for (int i = 0; i < 64; ++i) ones.push_back(s.alloc(1, 0, &sync));  // four one-page spans: 0 .. 12288
  std::uint64_t early = 0;
  int given = 0;
  for (auto off : ones) {
    PackedStore::Range r = s.free(off, 1);
    if (!r.len) continue;
    s.given_back(r);
    if (++given == 3) early = s.to_sync();  // one thread's mark: the first three
  }
  const std::uint64_t late = s.to_sync();  // another's, after the fourth
  s.synced(late);   // that thread: all four
  s.synced(early);  // the first, late with its stale mark: nothing more, nothing twice
  std::set<std::uint64_t> got;
  for (int i = 0; i < 4; ++i) {
    const std::uint64_t off = s.alloc(1, 0, &sync);  // a span each: the given-back ones first
    for (int k = 1; k < 16; ++k) s.alloc(1, 0, &sync);
    CHECK(got.insert(off).second);
  }
  CHECK(got == std::set<std::uint64_t>{0, 4096, 8192, 12288});
  CHECK(s.alloc(1, 0, &sync) == 4 * 4096);  // then fresh space
}

TEST_CASE("the piece allocator drains its sparsest spans for compaction and keeps their slots until undrained") {
  PackedStore s(256, 1 << 20);  // 16 pieces a span
  bool sync = false;
  std::vector<std::uint64_t> offs;
  for (std::uint64_t page = 0; page < 64; ++page) offs.push_back(s.alloc(2, page, &sync));  // four spans of twos
  for (std::uint64_t page = 0; page < 64; ++page)
    if (page % 16 >= (page < 32 ? 2 : 12)) s.free(offs[page], 2);  // 2, 2, 12 and 12 left
  std::vector<std::uint64_t> spans;
  std::vector<PackedStore::Piece> pieces = s.drain(8, &spans);
  // The two emptiest fit in the others' holes; a span of 12 does not (8 holes stay).
  REQUIRE(spans.size() == 2);
  CHECK(((spans[0] == offs[0] && spans[1] == offs[16]) || (spans[0] == offs[16] && spans[1] == offs[0])));
  REQUIRE(pieces.size() == 4);
  for (const PackedStore::Piece& p : pieces) {
    CHECK(p.units == 2);
    CHECK(offs[p.owner] == p.off);
  }
  // New pieces go to the spans that are not draining, then to a new one.
  for (int i = 0; i < 8; ++i) CHECK(s.alloc(2, 100, &sync) >= offs[32]);
  const std::uint64_t fresh = s.alloc(2, 101, &sync);
  CHECK(fresh > offs[63]);
  // A draining span emptied is not given back (its slots must not be reused
  // while moves are in flight) until it is undrained.
  for (std::uint64_t page = 0; page < 2; ++page) CHECK(s.free(offs[page], 2).len == 0);
  PackedStore::Range r = s.undrain(offs[0]);
  CHECK((r.off == offs[0] && r.len == 2 * 4096));
  CHECK(s.undrain(offs[16]).len == 0);  // kept pieces: back in the lists
  const std::uint64_t hole = s.alloc(2, 102, &sync);
  CHECK(hole != fresh + 512);  // a hole again, not fresh space
}

namespace {

// A page whose content says which page and which version it is.
void versioned_page(std::uint64_t* w, std::uint64_t page, std::uint64_t version) {
  bench::fill_page(page % 5 == 0 ? bench::PageData::Ints : bench::PageData::Text, page * 7 + version, w);
  w[0] = page;
  w[1] = version;
}

std::uint64_t stat_of(const std::string& s, const std::string& key) {
  const std::size_t at = s.find("\"" + key + "\":");
  return at == std::string::npos ? UINT64_MAX : std::stoull(s.substr(at + key.size() + 3));
}

}  // namespace

TEST_CASE("compaction moves live pieces out of sparse spans, gives them back, and every page stays exact") {
  Tier tier("lz4", 10);  // compaction when holes pass 10% of the spans
  constexpr unsigned kPages = 3000;
  alignas(4096) std::uint64_t w[512], back[512];
  for (unsigned p = 0; p < kPages; ++p) {
    versioned_page(w, p, 1);
    tier.qp->post_write(std::uint64_t{p} * 4096, w, 4096, p);
    tier.qp->submit();
    tier.wait_for(1);
  }
  const std::uint64_t before = stat_of(tier.t->stats_json(), "stored_bytes");
  for (unsigned p = 0; p < kPages; ++p)  // three in four freed, scattered: holes everywhere
    if (p % 4 != 1) tier.t->discard(std::uint64_t{p} * 4096, 4096);
  std::string s = tier.t->stats_json();
  const std::uint64_t holey = stat_of(s, "stored_bytes");
  INFO(s);
  CHECK(holey > before / 2);  // without compaction most spans keep a piece
  for (int i = 0; i < 200 && stat_of(tier.t->stats_json(), "stored_bytes") > holey / 2; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  s = tier.t->stats_json();
  INFO(s);
  CHECK(stat_of(s, "moved_pieces") > 0);
  CHECK(stat_of(s, "stored_bytes") <= holey / 2);
  // What is left is under the mark: holes below 1 MiB are not worth a move.
  CHECK(stat_of(s, "stored_bytes") - stat_of(s, "piece_bytes") <= (1u << 20) + stat_of(s, "stored_bytes") / 10);
  for (unsigned p = 1; p < kPages; p += 4) {  // every survivor exact
    tier.qp->post_read(std::uint64_t{p} * 4096, back, 4096, p);
    tier.qp->submit();
    tier.wait_for(1);
    versioned_page(w, p, 1);
    REQUIRE(std::memcmp(back, w, 4096) == 0);
  }
}

TEST_CASE("compaction races reads, write-backs and far frees without losing or tearing a page") {
  Tier tier("lz4", 5);
  tier.bytes->read_delay_us = 300;  // a read in flight while pieces move and spans go back
  constexpr unsigned kPages = 4096, kThreads = 2;
  std::vector<std::uint64_t> version(kPages, 0);  // each page is one thread's (p % kThreads); 0 = not stored
  std::atomic<bool> failed{false}, enough{false};
  auto worker = [&](unsigned id) {
    std::uint64_t next = std::uint64_t{id} << 40;  // versions unique to the page
    auto qp = tier.t->create_qp();
    auto wait_one = [&] {
      farmem::net::Completion c;
      while (qp->poll(&c, 1) == 0) {
      }
      if (c.failed) failed = true;
    };
    alignas(4096) std::uint64_t w[512], back[512];
    std::mt19937_64 rng(id);
    auto read_check = [&](unsigned p) {  // read back (exclusive: no longer stored) and checked
      qp->post_read(std::uint64_t{p} * 4096, back, 4096, p);
      qp->submit();
      wait_one();
      versioned_page(w, p, version[p]);
      if (std::memcmp(back, w, 4096) != 0) failed = true;
      version[p] = 0;
    };
    auto write = [&](unsigned p) {  // written back, a new version
      version[p] = ++next;
      versioned_page(w, p, version[p]);
      qp->post_write(std::uint64_t{p} * 4096, w, 4096, p);
      qp->submit();
      wait_one();
    };
    // Rounds of: every page written, three in four freed (holes for the
    // compactor), the rest read, checked and half of them written again,
    // while the compactor moves pieces under them.
    for (int round = 0; !enough && !failed; ++round) {
      for (unsigned p = id; p < kPages; p += kThreads)
        if (version[p] == 0) write(p);
      for (unsigned p = id; p < kPages; p += kThreads)
        if ((p / kThreads + round) % 4 != 0) {
          tier.t->discard(std::uint64_t{p} * 4096, 4096);
          version[p] = 0;
        }
      for (unsigned p = id; p < kPages && !failed; p += kThreads) {
        if (version[p] == 0) continue;
        if (rng() % 2) read_check(p);
        else write(p);
      }
    }
    for (unsigned p = id; p < kPages && !failed; p += kThreads) {  // what is left, checked
      if (version[p] == 0) continue;
      qp->post_read(std::uint64_t{p} * 4096, back, 4096, p);
      qp->submit();
      wait_one();
      versioned_page(w, p, version[p]);
      if (std::memcmp(back, w, 4096) != 0) failed = true;
    }
  };
  std::vector<std::thread> threads;
  for (unsigned i = 0; i < kThreads; ++i) threads.emplace_back(worker, i);
  // Until the compactor has moved enough pieces under the workers' feet.
  const auto start = std::chrono::steady_clock::now();
  const std::uint64_t want = farmem::test::kSanitized ? 100 : 2000;
  while (!failed && stat_of(tier.t->stats_json(), "moved_pieces") < want &&
         std::chrono::steady_clock::now() - start < std::chrono::seconds(20))
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  enough = true;
  for (auto& t : threads) t.join();
  const std::string s = tier.t->stats_json();
  INFO(s);
  CHECK_FALSE(failed.load());
  CHECK(stat_of(s, "damaged") == 0);
  CHECK(stat_of(s, "moved_pieces") > 0);
}
