// Page protection (src/tier/page_seal, protected, and the compressed tier's
// sealed pieces): pages round-trip through the layer, the store under it never
// holds their bytes in the clear, and a page that comes back altered, replayed
// (an older version of itself) or moved (another page's bytes) stops the
// program with one line naming the server and the page, or, under a pool,
// comes back as zeros for the pool to rebuild. End to end it runs in
// the integrity_aead far test and test/cli/protect_test.sh (a relay in between).
#include <catch2/catch.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <deque>
#include <functional>
#include <string>
#include <vector>

#include "../../bench/page_data.hpp"
#include "farmem/runtime.hpp"
#include "tier/compressed.hpp"
#include "tier/page_seal.hpp"
#include "tier/protected.hpp"

using namespace farmem::tier;

namespace {

// A byte-addressed store in this process, behind the transport interface; it
// remembers where each write went so a test can tamper with it.
struct Bytes final : farmem::net::Transport {
  std::vector<unsigned char> mem = std::vector<unsigned char>(16 << 20);
  std::vector<std::pair<std::uint64_t, std::size_t>> writes;
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
      b.writes.emplace_back(off, len);
      done.push_back(cookie);
    }
    void submit() override {}
    std::size_t poll(farmem::net::Completion* out, std::size_t max) override {
      return farmem::net::take_completions(done, out, max);
    }
  };
  std::unique_ptr<farmem::net::QueuePair> create_qp() override { return std::make_unique<Qp>(*this); }
  void discard(std::uint64_t, std::uint64_t) override {}
  std::uint64_t remote_usage() override { return 0; }
  void shutdown() override {}
  std::string describe() const override { return "bytes-server"; }
  bool holds(const std::string& s) const {
    return std::search(mem.begin(), mem.end(), s.begin(), s.end()) != mem.end();
  }
};

struct Tier {
  Bytes* bytes;
  std::unique_ptr<farmem::net::Transport> t;
  std::unique_ptr<farmem::net::QueuePair> qp;
  std::size_t unit = 4096;
  // piece > 0: one server of a pool whose pieces are that many bytes.
  Tier(const char* protect, const char* compress, std::size_t piece = 0) {
    farmem::Config cfg;
    cfg.protect = protect;
    cfg.compress = compress;
    cfg.far_mem_bytes = 16 << 20;
    auto b = std::make_unique<Bytes>();
    bytes = b.get();
    if (piece) {  // as tier/pool.cc stacks them
      unit = piece;
      t = protect_member(cfg, compress_member(cfg, "bytes-server", std::move(b), piece), piece);
    } else {
      t = protect_transport(cfg, compress_transport(cfg, std::move(b)));  // as net::connect stacks them
    }
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
  void write(std::uint64_t page, const void* p) {
    qp->post_write(page * unit, p, unit, page);
    qp->submit();
    wait_for(1);
  }
  void read(std::uint64_t page, void* p) {
    qp->post_read(page * unit, p, unit, page);
    qp->submit();
    wait_for(1);
  }
};

// A page of text with a marker in it, different per page and version.
void marked_page(std::uint64_t* w, int page, int version) {
  std::memset(w, 0, 4096);
  bench::fill_page(bench::PageData::Text, 9, w);
  const std::string m = "MARKER-" + std::to_string(page) + "-" + std::to_string(version) + "-END";
  std::memcpy(reinterpret_cast<char*>(w) + 1000, m.data(), m.size());
}

// Runs fn in a child and returns what it wrote on stderr; the child must exit
// with status 1 (detail::fatal) before fn returns.
std::string dies_with(const std::function<void()>& fn) {
  int err[2];
  REQUIRE(pipe(err) == 0);
  pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    dup2(err[1], 2);
    fn();
    _exit(0);  // not reached: a page that fails its check is never handed over
  }
  close(err[1]);
  std::string out;
  char buf[1024];
  for (ssize_t n; (n = read(err[0], buf, sizeof buf)) > 0;) out.append(buf, std::size_t(n));
  close(err[0]);
  int st = 0;
  waitpid(pid, &st, 0);
  CHECK(WIFEXITED(st));
  CHECK(WEXITSTATUS(st) == 1);
  return out;
}

}  // namespace

TEST_CASE("FARMEM_PROTECT values parse, and a bad one is named with the fix") {
  CHECK_FALSE(parse_protect("none"));
  CHECK(parse_protect("aead"));
  CHECK_THROWS_WITH(parse_protect("foo"), Catch::Contains("FARMEM_PROTECT='foo' is not none or aead"));
}

TEST_CASE("the cipher opens what it sealed, and nothing else") {
  PageSeal seal(1024);
  PageSeal::Cipher c(seal);
  alignas(4096) std::uint64_t page[512], out[512], back[512];
  marked_page(page, 5, 1);
  unsigned char tag[PageSeal::kTag], tag2[PageSeal::kTag];
  c.seal(5, 1, page, out, 4096, tag);
  CHECK(std::memcmp(page, out, 4096) != 0);
  REQUIRE(c.open(5, 1, out, back, 4096, tag));
  CHECK(std::memcmp(page, back, 4096) == 0);
  CHECK_FALSE(c.open(5, 2, out, back, 4096, tag));  // another version
  CHECK_FALSE(c.open(6, 1, out, back, 4096, tag));  // another page
  c.seal(5, 2, page, out + 0, 4096, tag2);          // the same bytes sealed again: other ciphertext
  CHECK(std::memcmp(tag, tag2, sizeof tag) != 0);
  reinterpret_cast<unsigned char*>(out)[77] ^= 1;
  CHECK_FALSE(c.open(5, 2, out, back, 4096, tag2));  // an altered bit
  // A second key (another process) opens nothing of the first.
  PageSeal other(1024);
  PageSeal::Cipher c2(other);
  c.seal(5, 3, page, out, 4096, tag);
  CHECK_FALSE(c2.open(5, 3, out, back, 4096, tag));
  CHECK(seal.next_version(7) == 1);
  CHECK(seal.next_version(7) == 2);
}

TEST_CASE("pages round-trip through the protection layer, and the store holds only ciphertext") {
  for (const char* compress : {"none", "lz4"}) {
    for (const char* protect : {"none", "aead"}) {
      INFO(compress << " " << protect);
      Tier tier(protect, compress);
      alignas(4096) std::uint64_t w[512], back[512];
      for (int round = 0; round < 2; ++round) {
        for (int p = 1; p <= 64; ++p) {
          marked_page(w, p, round);
          tier.write(std::uint64_t(p), w);
        }
        for (int p = 1; p <= 64; p += 3) {
          marked_page(w, p, round);
          tier.read(std::uint64_t(p), back);
          REQUIRE(std::memcmp(w, back, 4096) == 0);
          if (std::string(compress) == "lz4") tier.write(std::uint64_t(p), back);  // exclusive loads: store again
        }
      }
      // Protection off, the store shows the markers (so this check can fail);
      // on, it holds none of them.
      CHECK(tier.bytes->holds("MARKER-17-1-END") == (std::string(protect) == "none"));
      if (std::string(protect) == "aead" && std::string(compress) == "none")
        CHECK(tier.t->stats_json().find("\"protect\":{\"cipher\":\"aes-256-gcm\"") != std::string::npos);
    }
  }
}

TEST_CASE("an altered, replayed or moved page stops the program with one line naming the server and page") {
  for (const char* compress : {"none", "lz4"}) {
    const bool packed = std::string(compress) != "none";
    INFO(compress);
    // Altered: one bit of the stored bytes.
    std::string e = dies_with([&] {
      Tier tier("aead", compress);
      alignas(4096) std::uint64_t w[512];
      marked_page(w, 3, 0);
      tier.write(3, w);
      auto [off, len] = tier.bytes->writes.back();
      tier.bytes->mem[off + len / 2] ^= 0x08;
      tier.read(3, w);
    });
    CHECK(e.find("far page 3 came back from bytes-server altered, replayed or moved") != std::string::npos);
    CHECK(std::count(e.begin(), e.end(), '\n') == 1);
    // Replayed: the server hands back the page's first version after a second was written.
    e = dies_with([&] {
      Tier tier("aead", compress);
      alignas(4096) std::uint64_t w[512];
      marked_page(w, 4, 0);
      tier.write(4, w);
      std::vector<unsigned char> old = tier.bytes->mem;
      if (packed) tier.read(4, w);  // exclusive loads: the page must come back before it is written again
      marked_page(w, 4, 1);
      tier.write(4, w);
      tier.bytes->mem = old;
      tier.read(4, w);
    });
    CHECK(e.find("far page 4 came back from bytes-server altered, replayed or moved") != std::string::npos);
    // Moved: page 6's bytes where page 5's are (the same data, so the same size).
    e = dies_with([&] {
      Tier tier("aead", compress);
      alignas(4096) std::uint64_t w[512];
      marked_page(w, 0, 0);
      tier.write(5, w);
      tier.write(6, w);
      auto five = tier.bytes->writes[0], six = tier.bytes->writes[1];
      REQUIRE(five.second == six.second);
      std::memcpy(&tier.bytes->mem[five.first], &tier.bytes->mem[six.first], six.second);
      tier.read(5, w);
    });
    CHECK(e.find("far page 5 came back from bytes-server altered, replayed or moved") != std::string::npos);
  }
}

TEST_CASE("a pool server's piece that fails its check comes back as zeros and is counted") {
  for (const char* compress : {"none", "lz4"}) {
    INFO(compress);
    Tier tier("aead", compress, 2048);  // ec:2+M pieces
    alignas(4096) std::uint64_t w[512], back[512];
    marked_page(w, 3, 0);
    tier.write(3, w);  // the first half of the page is piece 3 on this server
    tier.write(4, w + 256);
    CHECK_FALSE(tier.bytes->holds("MARKER-3-0-END"));
    tier.read(3, back);  // kept when read (the pool's redundancy): read it again below
    REQUIRE(std::memcmp(w, back, 2048) == 0);
    auto [off, len] = tier.bytes->writes[0];
    tier.bytes->mem[off + len / 2] ^= 0x08;
    std::memset(back, 0x5a, sizeof back);
    tier.read(3, back);  // not the end of the program: the pool reads the other servers
    CHECK(std::all_of(reinterpret_cast<unsigned char*>(back), reinterpret_cast<unsigned char*>(back) + 2048,
                      [](unsigned char c) { return c == 0; }));
    tier.read(4, back);
    CHECK(std::memcmp(w + 256, back, 2048) == 0);
    const std::string st = tier.t->stats_json();
    INFO(st);
    CHECK(st.find(std::string(compress) == "none" ? "\"failed_checks\":1" : "\"damaged\":1") != std::string::npos);
  }
}
