// Races between faults and evictions with a tiny frame pool: many threads on
// the same few pages (rescues, waits on in-flight fetches), scopes that pin more
// pages than the hazard list holds (overflow pins), arrays freed and reallocated
// while other threads run, and an injected memory-server latency.
#include <catch2/catch.hpp>

#include <atomic>
#include <cstdlib>
#include <thread>
#include <vector>

#include "farmem/far.hpp"
#include "far/test_support.hpp"

using namespace farmem;
using farmem::test::mix;

namespace {
void start_runtime() {
  if (initialized()) return;
  setenv("FARMEM_SHM_DELAY_NS", "2000", 1);
  Config cfg = Config::from_env();
  cfg.local_mem_bytes = 8ull << 20;  // 2048 frames: constant eviction
  cfg.far_mem_bytes = 1ull << 30;
  cfg.evict_batch = 32;
  init(cfg);
}
constexpr std::uint64_t kPer = FarArray<std::uint64_t>::kPerPage;
}  // namespace

TEST_CASE("threads sharing pages under heavy eviction never lose a write") {
  start_runtime();
  const unsigned kThreads = 4;
  const std::uint64_t pages = 6000;  // ~3x the frame pool
  FarArray<std::uint64_t> a(pages * kPer);
  std::vector<std::uint64_t> version(pages * kPer, 0);  // each thread owns its column
  std::atomic<std::uint64_t> bad{0};
  const std::uint64_t ops = test::kSanitized ? 20'000 : 200'000;
  std::vector<std::thread> ts;
  for (unsigned t = 0; t < kThreads; ++t) {
    ts.emplace_back([&, t] {
      test::Rng rng(100 + t);
      for (std::uint64_t op = 0; op < ops; ++op) {
        std::uint64_t r = rng.next();
        // A hot set of 64 pages shared by all threads, plus a cold tail.
        std::uint64_t p = (r & 3) ? (r >> 8) % 64 : (r >> 8) % pages;
        std::uint64_t i = p * kPer + t;  // word t of page p belongs to thread t
        Scope s;
        std::uint64_t want = version[i] ? mix(i, version[i]) : 0;
        if (a.get(s, i) != want) ++bad;
        if (r & 16) {
          a.mut(s, i) = mix(i, ++version[i]);
        }
      }
    });
  }
  for (auto& t : ts) t.join();
  CHECK(bad.load() == 0);
  for (std::uint64_t i = 0; i < pages * kPer; ++i) {
    if (i % kPer >= kThreads) continue;
    Scope s;
    std::uint64_t want = version[i] ? mix(i, version[i]) : 0;
    if (a.get(s, i) != want) ++bad;
  }
  CHECK(bad.load() == 0);
  Stats st = stats();
  INFO(stats_json());
  CHECK(st.evictions > 0);
}

TEST_CASE("a scope may hold more pages than the hazard list") {
  start_runtime();
  const std::uint64_t pages = 1000;  // > kMaxHazards, < frame pool
  FarArray<std::uint64_t> a(pages * kPer);
  for (std::uint64_t p = 0; p < pages; ++p) a.store(p * kPer, mix(p, 1));
  std::atomic<bool> stop{false};
  std::thread churn([&] {  // keeps the evictor busy on other pages
    FarArray<std::uint64_t> b(8000 * kPer);
    test::Rng rng(7);
    while (!stop.load()) b.store((rng.next() % 8000) * kPer, 1);
  });
  for (int round = 0; round < (test::kSanitized ? 3 : 20); ++round) {
    Scope s;
    std::vector<const std::uint64_t*> held;
    for (std::uint64_t p = 0; p < pages; p += 3) held.push_back(&a.get(s, p * kPer));
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
    std::uint64_t bad = 0;
    for (std::size_t k = 0; k < held.size(); ++k) bad += *held[k] != mix(k * 3, 1);
    CHECK(bad == 0);  // pointers obtained in the scope stay valid all through it
  }
  stop = true;
  churn.join();
}

TEST_CASE("arrays freed and reallocated while other threads work read as zero") {
  start_runtime();
  std::atomic<bool> stop{false};
  std::atomic<std::uint64_t> bad{0};
  std::thread worker([&] {
    FarArray<std::uint64_t> w(4000 * kPer);
    test::Rng rng(9);
    std::uint64_t n = 0;
    while (!stop.load()) {
      std::uint64_t p = rng.next() % 4000;
      Scope s;
      std::uint64_t& x = w.mut(s, p * kPer);
      if (x != 0 && x != mix(p, 5)) ++bad;
      x = mix(p, 5);
      ++n;
    }
  });
  for (int round = 0; round < (test::kSanitized ? 5 : 30); ++round) {
    FarArray<std::uint64_t> a(3000 * kPer);
    std::uint64_t nonzero = 0;
    for (std::uint64_t p = 0; p < 3000; p += 7) nonzero += a.load(p * kPer + 3) != 0;
    CHECK(nonzero == 0);
    for (std::uint64_t p = 0; p < 3000; ++p) a.store(p * kPer + 3, mix(p, round));
    for (std::uint64_t p = 0; p < 3000; p += 11) CHECK(a.load(p * kPer + 3) == mix(p, round));
  }
  stop = true;
  worker.join();
  CHECK(bad.load() == 0);
}
