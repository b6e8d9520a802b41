// Integrity under eviction: a large far array with 10% local memory, random
// reads and writes from two threads racing the evictor, checked word for word
// against a shadow copy in plain memory. (4 GiB normally, 128 MiB under sanitizers.)
// With FARMEM_COMPRESS set (the integrity_lz4 test) the
// words are small numbers, so pages compress and the codec's path is the one
// taken, at 96 MiB (24 MiB under sanitizers). With FARMEM_PROTECT=aead (the
// integrity_aead tests) every page is sealed and checked, at the same sizes.
#include <catch2/catch.hpp>

#include <atomic>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "farmem/far.hpp"
#include "far/test_support.hpp"

using namespace farmem;

namespace {
const bool kCompressed = std::getenv("FARMEM_COMPRESS") != nullptr;
const bool kProtected = std::getenv("FARMEM_PROTECT") != nullptr && std::string(std::getenv("FARMEM_PROTECT")) != "none";
const bool kSmall = kCompressed || kProtected;  // a codec's CPU work per page: smaller sizes
// A value for word i at version v: random, or with FARMEM_COMPRESS 24 random
// bits, enough that a misplaced or stale page still shows.
std::uint64_t mix(std::uint64_t i, std::uint64_t v) {
  const std::uint64_t x = farmem::test::mix(i, v);
  return kCompressed ? x & 0xffffff : x;
}
}  // namespace

TEST_CASE("a far array matches its shadow copy while two threads race the evictor") {
  const std::uint64_t bytes = kSmall ? test::test_bytes(96ull << 20, 24ull << 20)
                                          : test::test_bytes(4ull << 30, 128ull << 20);
  Config cfg = Config::from_env();
  cfg.local_mem_bytes = std::max<std::uint64_t>(bytes / 10, 8ull << 20);
  cfg.far_mem_bytes = 2 * bytes;
  init(cfg);

  constexpr std::uint64_t kPer = FarArray<std::uint64_t>::kPerPage;
  const std::uint64_t n = bytes / 8, pages = n / kPer;
  FarArray<std::uint64_t> a(n);
  std::vector<std::uint64_t> shadow(n);

  for (std::uint64_t p = 0; p < pages; ++p) {  // every page written once: all of it goes far
    Scope s;
    for (std::uint64_t k = 0; k < kPer; ++k) {
      std::uint64_t i = p * kPer + k;
      a.mut(s, i) = shadow[i] = mix(i, 0);
    }
  }

  // Thread t owns the words i with i % 2 == t, so both threads share every page
  // but never write the same word.
  const std::uint64_t ops = kSmall ? (test::kSanitized ? 20'000 : 150'000)
                                        : (test::kSanitized ? 100'000 : 1'500'000);
  std::atomic<std::uint64_t> bad_reads{0};
  auto worker = [&](unsigned t) {
    test::Rng rng(t + 1);
    std::uint64_t bad = 0;
    for (std::uint64_t op = 0; op < ops; ++op) {
      std::uint64_t r = rng.next();
      std::uint64_t i = ((r % pages) * kPer + ((r >> 32) % kPer)) & ~std::uint64_t{1};
      i += t;
      Scope s;
      if (a.get(s, i) != shadow[i]) ++bad;
      if (r & (1ull << 20)) {  // half the ops write
        std::uint64_t v = mix(i, op + 1);
        a.mut(s, i) = v;
        shadow[i] = v;
      }
      // A second page in the same scope: two pages pinned at once.
      std::uint64_t j = (((r >> 7) % pages) * kPer) + t;
      if (a.get(s, j) != shadow[j]) ++bad;
    }
    bad_reads += bad;
  };
  std::thread t0(worker, 0), t1(worker, 1);
  t0.join();
  t1.join();
  CHECK(bad_reads.load() == 0);

  std::uint64_t mismatched = 0;
  for (std::uint64_t p = 0; p < pages; ++p) {
    Scope s;
    const std::uint64_t* w = &a.get(s, p * kPer);
    for (std::uint64_t k = 0; k < kPer; ++k) mismatched += w[k] != shadow[p * kPer + k];
  }
  CHECK(mismatched == 0);

  Stats st = stats();
  INFO(stats_json());
  CHECK(st.evictions > pages / 2);  // it really went far
  CHECK(st.writebacks > 0);
  CHECK(st.fetches > 0);
  CHECK(st.resident_bytes <= cfg.local_mem_bytes);
  if (kCompressed) {  // the pages really were compressed, and stored smaller
    const std::string j = stats_json();
    CHECK(j.find("\"compress\":{\"codec\"") != std::string::npos);
    CHECK(j.find("\"raw_pages\":0,") != std::string::npos);
  }
  if (kProtected && !kCompressed) {  // the pages really were sealed and opened
    const std::string j = stats_json();
    CHECK(j.find("\"protect\":{\"cipher\":\"aes-256-gcm\"") != std::string::npos);
  }
}
