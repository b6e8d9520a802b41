// The transparent region: farmem_malloc'd memory used through plain pointers
// by several threads while the evictor moves its pages out and back, checked
// against a shadow copy; freed memory reads as zeros when reused; software-
// paged arrays in the same process share the one local budget.
#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "far/test_support.hpp"
#include "farmem/far.hpp"
#include "farmem/uthread.hpp"
#include "farmem/farmem.h"

using namespace farmem;

namespace {
void start() {
  if (initialized()) return;
  Config cfg = Config::from_env();
  cfg.local_mem_bytes = 16ull << 20;
  cfg.far_mem_bytes = 8ull << 30;
  cfg.hw_mem_bytes = 2ull << 30;
  init(cfg);
}
// FARMEM_HW_FAULT_AROUND=0 (the hw_region_plain_order run): no page comes in ahead.
bool fault_around() {
  const char* v = std::getenv("FARMEM_HW_FAULT_AROUND");
  return v == nullptr || std::string(v) != "0";
}
}  // namespace

TEST_CASE("plain pointers into far memory stay exact under eviction") {
  start();
  const std::uint64_t bytes = test::test_bytes(256ull << 20, 64ull << 20);
  const std::uint64_t words = bytes / 8, pages = bytes / 4096;
  auto* w = static_cast<std::uint64_t*>(farmem_malloc(bytes));
  REQUIRE(w != nullptr);
  CHECK(farmem_owns(w));
  CHECK(farmem_usable_size(w) == bytes);
  std::vector<std::uint64_t> shadow(words, 0);
  std::uint64_t nonzero = 0;
  for (std::uint64_t i = 0; i < words; i += 509) nonzero += w[i] != 0;  // fresh pages read as zero
  CHECK(nonzero == 0);
  for (std::uint64_t p = 0; p < pages; ++p) w[p * 512] = shadow[p * 512] = test::mix(p * 512, 0);

  std::atomic<std::uint64_t> bad{0};
  auto worker = [&](unsigned t) {
    test::Rng rng(t + 3);
    const int ops = test::short_run() ? 20'000 : 200'000;
    for (int op = 0; op < ops; ++op) {
      std::uint64_t r = rng.next();
      std::uint64_t i = ((r % pages) * 512 + ((r >> 32) % 256) * 2) + t;  // thread t: words of parity t
      if (w[i] != shadow[i]) ++bad;
      std::uint64_t v = test::mix(i, op + 1);
      w[i] = v;
      shadow[i] = v;
    }
  };
  std::thread a(worker, 0), b(worker, 1);
  a.join();
  b.join();
  CHECK(bad.load() == 0);
  std::uint64_t mismatched = 0;
  for (std::uint64_t i = 0; i < words; ++i) mismatched += w[i] != shadow[i];
  CHECK(mismatched == 0);
  Stats st = stats();
  INFO(stats_json());
  CHECK(st.evictions > pages / 2);
  CHECK(st.resident_bytes <= (16ull << 20));
  farmem_free(w);
}

TEST_CASE("freed transparent memory is reused and reads as zeros") {
  start();
  for (int round = 0; round < 4; ++round) {
    const std::uint64_t bytes = 64ull << 20;
    auto* p = static_cast<unsigned char*>(farmem_calloc(1, bytes));
    REQUIRE(p != nullptr);
    std::uint64_t nonzero = 0;
    for (std::uint64_t i = 0; i < bytes; i += 4096 + 17) nonzero += p[i] != 0;
    CHECK(nonzero == 0);
    std::memset(p, 0x5a, bytes);  // 4x the budget: most of it goes far
    std::uint64_t wrong = 0;
    for (std::uint64_t i = 0; i < bytes; i += 4093) wrong += p[i] != 0x5a;
    CHECK(wrong == 0);
    farmem_free(p);
  }
}

TEST_CASE("far pointers and plain pointers share one budget") {
  start();
  FarArray<std::uint64_t> a(64ull << 20 >> 3);  // 64 MiB software-paged
  auto* w = static_cast<std::uint64_t*>(farmem_malloc(64ull << 20));  // 64 MiB transparent
  REQUIRE(w != nullptr);
  for (std::uint64_t p = 0; p < (64ull << 20) / 4096; ++p) {
    a.store(p * 512, p);
    w[p * 512] = ~p;
  }
  std::uint64_t bad = 0;
  for (std::uint64_t p = 0; p < (64ull << 20) / 4096; ++p) bad += a.load(p * 512) != p || w[p * 512] != ~p;
  CHECK(bad == 0);
  CHECK(stats().resident_bytes <= (16ull << 20));
  farmem_free(w);
}

TEST_CASE("sequential faults bring the following pages in with them") {
  start();
  const std::uint64_t bytes = 64ull << 20;  // 4x the budget
  auto* p = static_cast<std::uint64_t*>(farmem_malloc(bytes));
  REQUIRE(p != nullptr);
  for (std::uint64_t i = 0; i < bytes / 8; i += 512) p[i] = i * 3 + 1;
  const std::uint64_t before = stats().prefetches;
  std::uint64_t wrong = 0;
  for (int pass = 0; pass < 2; ++pass)  // every page was written back: the scans fetch them
    for (std::uint64_t i = 0; i < bytes / 8; i += 512) wrong += p[i] != i * 3 + 1;
  CHECK(wrong == 0);
  INFO(stats_json());
  if (fault_around()) CHECK(stats().prefetches - before > bytes / 4096 / 2);
  else CHECK(stats().prefetches == before);
  CHECK(stats().resident_bytes <= (16ull << 20));
  farmem_free(p);
}

// With FARMEM_HW_FAULTS=signal a uthread that faults parks inside the SIGBUS
// handler and the others run; with the handler thread it blocks its scheduler.
// Either way no byte may be lost while the evictor races the faults.
TEST_CASE("uthreads fault on transparent pages while the evictor runs") {
  start();
  const std::uint64_t bytes = test::test_bytes(128ull << 20, 48ull << 20);
  const std::uint64_t words = bytes / 8, pages = bytes / 4096;
  auto* w = static_cast<std::uint64_t*>(farmem_calloc(1, bytes));
  REQUIRE(w != nullptr);
  constexpr unsigned kUthreads = 32;
  std::vector<std::uint64_t> shadow(words, 0);
  std::atomic<std::uint64_t> bad{0};
  uthread::start(1);
  std::vector<uthread::Handle> hs;
  for (unsigned t = 0; t < kUthreads; ++t)
    hs.push_back(uthread::spawn([&, t] {
      test::Rng rng(t + 11);
      const int ops = test::short_run() ? 2'000 : 20'000;
      for (int op = 0; op < ops; ++op) {
        std::uint64_t r = rng.next();
        std::uint64_t i = (r % pages) * 512 + (((r >> 32) % 16) * kUthreads) + t;  // word t of 32: uthread t's
        if (w[i] != shadow[i]) ++bad;
        std::uint64_t v = test::mix(i, op + 1);
        w[i] = v;
        shadow[i] = v;
        if (op % 64 == 0) uthread::yield();
      }
    }));
  for (auto& h : hs) h.join();
  uthread::stop();
  CHECK(bad.load() == 0);
  std::uint64_t mismatched = 0;
  for (std::uint64_t i = 0; i < words; ++i) mismatched += w[i] != shadow[i];
  CHECK(mismatched == 0);
  CHECK(stats().resident_bytes <= (16ull << 20));
  farmem_free(w);
}

// FARMEM_HW_DIRTY=track: pages only read since they came in are dropped without
// a write-back, and pages written are still exact after being evicted.
TEST_CASE("clean transparent pages are dropped without a write-back") {
  start();
  const char* mode = std::getenv("FARMEM_HW_DIRTY");
  if (mode == nullptr || std::string(mode) != "track") {
    SUCCEED("FARMEM_HW_DIRTY is not track: every page is written back");
    return;
  }
  const std::uint64_t bytes = 64ull << 20, pages = bytes / 4096;  // 4x the budget
  auto* p = static_cast<std::uint64_t*>(farmem_malloc(bytes));
  REQUIRE(p != nullptr);
  for (std::uint64_t i = 0; i < pages; ++i) p[i * 512] = i + 7;
  const Stats before = stats();
  std::uint64_t wrong = 0;
  for (int pass = 0; pass < 2; ++pass)  // reads only: every page comes in clean
    for (std::uint64_t i = 0; i < pages; ++i) wrong += p[i * 512] != i + 7;
  const Stats after = stats();
  CHECK(wrong == 0);
  INFO(stats_json());
  CHECK(after.clean_drops - before.clean_drops > pages / 2);
  CHECK(after.writebacks - before.writebacks < pages / 4);  // only what was dirty from the writes
  for (std::uint64_t i = 0; i < pages; i += 5) p[i * 512] += 1;  // the first write to a clean page
  for (int pass = 0; pass < 2; ++pass)
    for (std::uint64_t i = 0; i < pages; ++i) wrong += p[i * 512] != i + 7 + (i % 5 == 0);
  CHECK(wrong == 0);
  farmem_free(p);
}

TEST_CASE("strided faults bring the pages at that stride in with them") {
  start();
  const std::uint64_t bytes = 64ull << 20, pages = bytes / 4096;  // 4x the budget
  auto* p = static_cast<std::uint64_t*>(farmem_malloc(bytes));
  REQUIRE(p != nullptr);
  for (std::uint64_t i = 0; i < pages; ++i) p[i * 512] = i * 5 + 3;
  for (std::uint64_t stride : {3ull, 17ull}) {
    const std::uint64_t before = stats().prefetches;
    std::uint64_t wrong = 0, touched = 0;
    for (std::uint64_t start_page = 0; start_page < stride; ++start_page)
      for (std::uint64_t i = start_page; i < pages; i += stride, ++touched) wrong += p[i * 512] != i * 5 + 3;
    CHECK(wrong == 0);
    INFO("stride " << stride << ": " << stats_json());
    if (fault_around()) CHECK(stats().prefetches - before > touched / 2);
    else CHECK(stats().prefetches == before);
  }
  std::uint64_t wrong = 0;  // backwards, one page at a time
  for (std::uint64_t i = pages; i-- > 0;) wrong += p[i * 512] != i * 5 + 3;
  CHECK(wrong == 0);
  farmem_free(p);
}

// With FARMEM_HW_FIRST_TOUCH=kernel (the default) a never-used page is filled
// by the kernel and the evictor only counts it until it watches its chunk; with
// =runtime every page is ours from the start. Either way: blocks that come and
// go while the evictor takes chunks away keep their bytes, freed blocks come
// back as zeros, and the budget holds.
TEST_CASE("blocks filled, checked and freed by two threads while chunks are watched") {
  start();
  const std::uint64_t block = 4ull << 20, words = block / 8;
  const int rounds = test::short_run() ? 24 : 96;
  std::atomic<std::uint64_t> bad{0}, nonzero{0};
  auto worker = [&](unsigned t) {
    std::vector<std::pair<std::uint64_t*, std::uint64_t>> live;  // block, seed
    for (int r = 0; r < rounds; ++r) {
      auto* w = static_cast<std::uint64_t*>(farmem_malloc(block));
      if (w == nullptr) { ++bad; return; }
      for (std::uint64_t i = 0; i < words; i += 97) nonzero += w[i] != 0;
      const std::uint64_t seed = t * 1000 + r;
      for (std::uint64_t i = 0; i < words; ++i) w[i] = test::mix(i, seed);
      live.emplace_back(w, seed);
      if (live.size() > 6) {  // six live blocks a thread: 48 MiB against a 16 MiB budget
        auto [old, s] = live.front();
        for (std::uint64_t i = 0; i < words; i += 13) bad += old[i] != test::mix(i, s);
        farmem_free(old);
        live.erase(live.begin());
      }
    }
    for (auto [w, s] : live) {
      for (std::uint64_t i = 0; i < words; ++i) bad += w[i] != test::mix(i, s);
      farmem_free(w);
    }
  };
  std::thread a(worker, 1), b(worker, 2);
  a.join();
  b.join();
  INFO(stats_json());
  CHECK(bad.load() == 0);
  CHECK(nonzero.load() == 0);
  CHECK(stats().resident_bytes <= (16ull << 20));
}

// The evictor takes a transparent victim with the resident pages of its group
// (hw::Region::kEvictPages), not of its whole 2 MiB block: groups of one block
// leave while other groups of it stay and are written. One thread keeps
// writing one group in every 2 MiB block while another streams over the rest
// (4x the budget) and forces those blocks out around it. The write-protection
// of the leaving groups must cover every page that leaves, whatever it skips,
// so nothing written is lost on either side.
TEST_CASE("groups of a 2 MiB block leave while another group of it is written") {
  start();
  const std::uint64_t bytes = 64ull << 20, pages = bytes / 4096, block = 512, group = 64;
  auto* w = static_cast<std::uint64_t*>(farmem_malloc(bytes));
  REQUIRE(w != nullptr);
  auto hot = [&](std::uint64_t p) { return (p % block) / group == 3; };  // 4 MiB of the 64
  std::atomic<bool> done{false};
  std::atomic<std::uint64_t> bad{0}, hot_rounds{0};
  std::thread writer([&] {
    std::vector<std::uint64_t> version(pages, 0);
    for (std::uint64_t round = 1; !done.load(std::memory_order_relaxed) || round < 3; ++round) {
      for (std::uint64_t p = 0; p < pages; ++p) {
        if (!hot(p)) continue;
        const std::uint64_t i = p * 512 + 2 + round % 500;  // another word of it each round
        if (w[p * 512] != (version[p] ? test::mix(p, version[p]) : 0)) ++bad;
        w[p * 512] = test::mix(p, round);
        w[i] = test::mix(i, round);
        version[p] = round;
      }
      hot_rounds.fetch_add(1, std::memory_order_relaxed);
    }
    for (std::uint64_t p = 0; p < pages; ++p)
      if (hot(p) && w[p * 512] != test::mix(p, version[p])) ++bad;
  });
  const int passes = test::short_run() ? 2 : 4;
  for (int pass = 1; pass <= passes; ++pass)
    for (std::uint64_t p = 0; p < pages; ++p) {
      if (hot(p)) continue;
      const std::uint64_t want = pass == 1 ? 0 : test::mix(p * 512 + 1, pass - 1);
      if (w[p * 512 + 1] != want) ++bad;
      w[p * 512 + 1] = test::mix(p * 512 + 1, pass);
    }
  done.store(true);
  writer.join();
  INFO(stats_json());
  CHECK(bad.load() == 0);
  CHECK(hot_rounds.load() >= 3);
  CHECK(stats().resident_bytes <= (16ull << 20));
  farmem_free(w);
}

// hw_quick_refaults counts faults on pages that left fewer than a budget's worth
// of evictions before: most refaults when the working set is half again the
// budget (about 80% here), few when it is four times the budget (about 10%).
// Pages are visited in a new random order each pass, so no stride brings them
// in ahead.
TEST_CASE("quick refaults tell a working set just over the budget from one far over it") {
  start();
  const std::uint64_t budget = (16ull << 20) / 4096;
  auto passes = [budget](std::uint64_t pages, int rounds, std::uint64_t seed) {
    auto* w = static_cast<std::uint64_t*>(farmem_malloc(pages * 4096));
    REQUIRE(w != nullptr);
    std::vector<std::uint64_t> order(pages);
    for (std::uint64_t p = 0; p < pages; ++p) order[p] = p;
    test::Rng rng(seed);
    std::uint64_t bad = 0;
    Stats before;
    for (int r = 0; r < rounds; ++r) {
      if (r == 1) {
        // Refaults only: round 0 touched every page first. With first touches
        // by the kernel the evictor finds those pages when it next looks
        // (within 50 ms): wait until it has sent the excess far.
        const std::uint64_t t0 = stats().hw_evicted;
        for (int waited = 0; waited < 500 && pages > budget && stats().hw_evicted - t0 < (pages - budget) / 2;
             ++waited)
          std::this_thread::sleep_for(std::chrono::milliseconds(10));
        before = stats();
      }
      for (std::uint64_t p = pages - 1; p > 0; --p) std::swap(order[p], order[rng.next() % (p + 1)]);
      for (std::uint64_t p : order) {
        std::uint64_t& x = w[p * 512 + r % 512];
        if (r > 0 && w[p * 512 + (r - 1) % 512] != test::mix(p, r - 1)) ++bad;
        x = test::mix(p, r);
      }
    }
    const Stats after = stats();
    farmem_free(w);
    CHECK(bad == 0);
    return std::pair<std::uint64_t, std::uint64_t>(after.hw_quick_refaults - before.hw_quick_refaults,
                                                   after.hw_faults - before.hw_faults);
  };
  const int rounds = test::short_run() ? 3 : 5;
  const auto [near_quick, near_faults] = passes(budget * 3 / 2, rounds, 5);
  const auto [far_quick, far_faults] = passes(budget * 4, rounds, 6);
  INFO("1.5x budget: " << near_quick << " of " << near_faults << " faults quick; 4x budget: " << far_quick
                        << " of " << far_faults << "; " << stats_json());
  REQUIRE(near_faults > budget / 4);
  REQUIRE(far_faults > budget * 4);
  CHECK(near_quick * 2 > near_faults);
  CHECK(far_quick * 5 < far_faults);
  const std::string js = stats_json();
  CHECK(js.find("\"runtime_threads\":{\"evictor\":{\"cpu_ms\":") != std::string::npos);
  CHECK(js.find("\"process_cpu_ms\":") != std::string::npos);
}

// FARMEM_HW_KEEP_HOT: a small set of pages used all along while a large
// buffer streams through (sort's merge passes over its lines, with the text
// they point into): its groups come back soon after they leave, so CLOCK
// passes over them for a while, and every page stays exact.
TEST_CASE("a hot set stays while a large buffer streams past it") {
  start();
  const std::uint64_t hot_pages = 512, stream_pages = 16384;  // budget: 4096 frames
  auto* hot = static_cast<std::uint64_t*>(farmem_malloc(hot_pages * 4096));
  auto* stream = static_cast<std::uint64_t*>(farmem_malloc(stream_pages * 4096));
  REQUIRE(hot != nullptr);
  REQUIRE(stream != nullptr);
  test::Rng rng(9);
  std::uint64_t bad = 0, hot_touches = 0;
  const int rounds = 10;
  const Stats before = stats();
  for (int r = 0; r < rounds; ++r) {
    for (std::uint64_t p = 0; p < stream_pages; ++p) {
      if (r > 0 && stream[p * 512] != test::mix(p, r - 1)) ++bad;
      stream[p * 512] = test::mix(p, r);
      if (p % 2 == 0) {
        const std::uint64_t h = rng.next() % hot_pages;
        hot[h * 512 + 1] += 1;
        ++hot_touches;
      }
    }
  }
  const Stats after = stats();
  std::uint64_t sum = 0;
  for (std::uint64_t h = 0; h < hot_pages; ++h) sum += hot[h * 512 + 1];
  const std::uint64_t quick = after.hw_quick_refaults - before.hw_quick_refaults;
  INFO("quick refaults " << quick << ", faults " << after.hw_faults - before.hw_faults << ", hot touches "
                         << hot_touches << "; " << stats_json());
  CHECK(bad == 0);
  CHECK(sum == hot_touches);
  // Whether it pays is a benchmark's question (docs/benchmarks.md: sort); here,
  // that the rule acts, and only when it is on.
  const std::uint64_t passes = after.hw_hot_passes - before.hw_hot_passes;
  const char* keep = std::getenv("FARMEM_HW_KEEP_HOT");
  if (keep == nullptr || *keep == 0 || std::string(keep) == "1") CHECK(passes > 0);
  else CHECK(passes == 0);
  farmem_free(hot);
  farmem_free(stream);
}
