// Integrity under eviction: a large far array with 10% local memory, random
// reads and writes from two threads racing the evictor, checked word for word
// against a shadow copy in plain memory. (4 GiB normally, 128 MiB under sanitizers.)
#include <catch2/catch.hpp>

#include <atomic>
#include <thread>
#include <vector>

#include "farmem/far.hpp"
#include "far/test_support.hpp"

using namespace farmem;
using farmem::test::mix;

TEST_CASE("a far array matches its shadow copy while two threads race the evictor") {
  const std::uint64_t bytes = test::test_bytes(4ull << 30, 128ull << 20);
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
  const std::uint64_t ops = test::kSanitized ? 100'000 : 1'500'000;
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
}
