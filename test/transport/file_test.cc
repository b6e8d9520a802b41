// The file:// transport (an SSD tier): its queue pair on its own (pieces of any
// multiple of 512 bytes, more in flight than the ring holds, holes punched on
// discard), then a far array four times the local budget on it, read back
// word for word, from plain threads and from 64 uthreads. The file goes in
// FARMEM_FILE_TEST_DIR (a directory on a disk: meson's build directory).
// Sizes are small: a disk read here takes about 170 us, and most ops miss.
#include <catch2/catch.hpp>

#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include "farmem/far.hpp"
#include "farmem/uthread.hpp"
#include "far/test_support.hpp"
#include "transport/queue_pair.hpp"

using namespace farmem;
using farmem::test::mix;

namespace {

std::string test_dir() {
  const char* d = std::getenv("FARMEM_FILE_TEST_DIR");
  return d ? d : "/var/tmp";
}

void wait_all(net::QueuePair& qp, std::size_t n) {
  net::Completion c[64];
  for (std::size_t got = 0; got < n;) {
    std::size_t k = qp.poll(c, 64);
    for (std::size_t i = 0; i < k; ++i) REQUIRE(!c[i].failed);
    got += k;
    if (k == 0) qp.wait(100);
  }
}

}  // namespace

TEST_CASE("file:// moves pieces of any 512-byte multiple, many in flight, and punches holes", "[qp]") {
  Config cfg;
  cfg.backend = "file://" + test_dir();
  cfg.far_mem_bytes = 16ull << 20;
  std::unique_ptr<net::Transport> t = net::connect(cfg);
  INFO(t->describe());
  std::unique_ptr<net::QueuePair> qp = t->create_qp();

  // 600 pieces of 512 B to 8 KiB, back to back: more than the 256-entry ring.
  constexpr std::size_t kPieces = 600;
  std::vector<std::uint64_t> off(kPieces), len(kPieces);
  std::uint64_t at = 0;
  for (std::size_t i = 0; i < kPieces; ++i) {
    off[i] = at;
    len[i] = 512 * (1 + mix(i, 7) % 16);
    at += len[i];
  }
  const std::size_t buf_bytes = (at + 4095) & ~std::size_t{4095};  // aligned_alloc wants a multiple
  auto* out = static_cast<unsigned char*>(std::aligned_alloc(4096, buf_bytes));
  auto* in = static_cast<unsigned char*>(std::aligned_alloc(4096, buf_bytes));
  for (std::uint64_t b = 0; b < at; ++b) out[b] = static_cast<unsigned char>(mix(b, 1));
  std::memset(in, 0, at);

  for (std::size_t i = 0; i < kPieces; ++i) qp->post_write(off[i], out + off[i], len[i], i);
  qp->submit();
  wait_all(*qp, kPieces);
  for (std::size_t i = kPieces; i-- > 0;) qp->post_read(off[i], in + off[i], len[i], i);  // another order
  qp->submit();
  wait_all(*qp, kPieces);
  CHECK(std::memcmp(in, out, at) == 0);

  const std::uint64_t before = t->remote_usage();
  CHECK(before >= at);
  t->discard(0, 16ull << 20);
  CHECK(t->remote_usage() < before);
  CHECK(t->stats_json().find("\"writes\":600") != std::string::npos);

  qp.reset();
  t->shutdown();
  std::free(out);
  std::free(in);
}

TEST_CASE("a far array four times the local budget lives on file://", "[array]") {
  const std::uint64_t bytes = test::test_bytes(32ull << 20, 32ull << 20);
  Config cfg = Config::from_env();
  cfg.backend = "file://" + test_dir();
  cfg.local_mem_bytes = bytes / 4;
  cfg.far_mem_bytes = 2 * bytes;
  init(cfg);

  constexpr std::uint64_t kPer = FarArray<std::uint64_t>::kPerPage;
  const std::uint64_t n = bytes / 8, pages = n / kPer;
  FarArray<std::uint64_t> a(n);
  std::vector<std::uint64_t> shadow(n);
  for (std::uint64_t p = 0; p < pages; ++p) {
    Scope s;
    for (std::uint64_t k = 0; k < kPer; ++k) {
      std::uint64_t i = p * kPer + k;
      a.mut(s, i) = shadow[i] = mix(i, 0);
    }
  }

  // Random writes and rereads from two plain threads (each owns every other word).
  const std::uint64_t ops = test::kSanitized ? 600 : 1'500;
  std::atomic<std::uint64_t> bad{0};
  auto worker = [&](unsigned t) {
    test::Rng rng(t + 1);
    for (std::uint64_t op = 0; op < ops; ++op) {
      std::uint64_t r = rng.next();
      std::uint64_t i = (((r % pages) * kPer + ((r >> 32) % kPer)) & ~std::uint64_t{1}) + t;
      Scope s;
      if (a.get(s, i) != shadow[i]) ++bad;
      if (r & (1ull << 20)) a.mut(s, i) = shadow[i] = mix(i, op + 1);
    }
  };
  std::thread t0(worker, 0), t1(worker, 1);
  t0.join();
  t1.join();
  CHECK(bad.load() == 0);

  // 64 uthreads on one core: a miss parks its uthread while the others run.
  uthread::start(1);
  uthread::WaitGroup wg;
  const std::uint64_t per = test::kSanitized ? 20 : 60;
  for (unsigned u = 0; u < 64; ++u) {
    wg.add(1);
    uthread::spawn([&, u] {
      test::Rng rng(100 + u);
      for (std::uint64_t op = 0; op < per; ++op) {
        std::uint64_t r = rng.next();
        std::uint64_t i = ((r % pages) * kPer + ((r >> 32) % kPer)) / 64 * 64 + u;  // word i belongs to uthread u
        Scope s;
        if (a.get(s, i) != shadow[i]) ++bad;
        a.mut(s, i) = shadow[i] = mix(i, op + 1000);
      }
      wg.done();
    }).detach();
  }
  wg.wait();
  CHECK(bad.load() == 0);

  // Every word, read back by the 64 uthreads (page p by uthread p % 64).
  std::atomic<std::uint64_t> mismatched{0};
  for (unsigned u = 0; u < 64; ++u) {
    wg.add(1);
    uthread::spawn([&, u] {
      for (std::uint64_t p = u; p < pages; p += 64) {
        Scope s;
        const std::uint64_t* w = &a.get(s, p * kPer);
        for (std::uint64_t k = 0; k < kPer; ++k) mismatched += w[k] != shadow[p * kPer + k];
      }
      wg.done();
    }).detach();
  }
  wg.wait();
  uthread::stop();
  CHECK(mismatched.load() == 0);

  Stats st = stats();
  INFO(stats_json());
  CHECK(st.evictions > pages / 2);
  CHECK(st.fetches > 0);
  CHECK(stats_json().find("\"file\":{") != std::string::npos);
}
