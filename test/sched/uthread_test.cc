// Uthreads: sync primitives under contention (no lost wake-ups, no deadlock),
// join and exit ordering, sleep, work stealing, waiting on descriptors, and
// far-memory misses that park a uthread: many uthreads missing on one page
// cause one fetch and all wake.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <thread>
#include <vector>

#include "far/test_support.hpp"
#include "farmem/far.hpp"
#include "farmem/uthread.hpp"

using namespace farmem;
namespace ut = farmem::uthread;

namespace {
void start_all() {
  if (!initialized()) {
    Config cfg = Config::from_env();
    cfg.local_mem_bytes = 16ull << 20;
    cfg.far_mem_bytes = 1ull << 30;
    cfg.shm_delay_ns = 3000;  // a network-like round trip, so misses really park
    init(cfg);
  }
  ut::start(2);
}
struct Session {
  Session() { start_all(); }
  ~Session() { ut::stop(); }
};
constexpr std::uint64_t kPer = FarArray<std::uint64_t>::kPerPage;
}  // namespace

TEST_CASE("a mutex keeps 200 uthreads' increments exact") {
  Session s;
  ut::Mutex m;
  std::uint64_t counter = 0;  // plain: the mutex is the only protection
  ut::WaitGroup wg;
  const int kThreads = 200, kIters = test::kSanitized ? 100 : 1000;
  for (int t = 0; t < kThreads; ++t) {
    wg.add(1);
    ut::spawn([&, t] {
      for (int i = 0; i < kIters; ++i) {
        m.lock();
        ++counter;
        if ((i + t) % 17 == 0) ut::yield();  // switch while holding it
        m.unlock();
      }
      wg.done();
    }).detach();
  }
  wg.wait();  // from a plain thread
  CHECK(counter == std::uint64_t(kThreads) * kIters);
}

TEST_CASE("condition variables pass every item, none lost") {
  Session s;
  ut::Mutex m;
  ut::CondVar not_empty, not_full;
  std::vector<std::uint64_t> q;
  const std::size_t kCap = 4;
  const int kProducers = 40, kConsumers = 40, kItems = test::kSanitized ? 50 : 500;
  std::atomic<std::uint64_t> sum{0}, got{0};
  ut::WaitGroup wg;
  for (int p = 0; p < kProducers; ++p) {
    wg.add(1);
    ut::spawn([&, p] {
      for (int i = 1; i <= kItems; ++i) {
        m.lock();
        not_full.wait(m, [&] { return q.size() < kCap; });
        q.push_back(std::uint64_t(p) * 1000000 + i);
        not_empty.notify_one();
        m.unlock();
      }
      wg.done();
    }).detach();
  }
  for (int c = 0; c < kConsumers; ++c) {
    wg.add(1);
    ut::spawn([&] {
      for (int i = 0; i < kItems; ++i) {
        m.lock();
        not_empty.wait(m, [&] { return !q.empty(); });
        sum += q.back();
        q.pop_back();
        not_full.notify_one();
        m.unlock();
        ++got;
      }
      wg.done();
    }).detach();
  }
  wg.wait();
  std::uint64_t want = 0;
  for (int p = 0; p < kProducers; ++p)
    for (int i = 1; i <= kItems; ++i) want += std::uint64_t(p) * 1000000 + i;
  CHECK(got.load() == std::uint64_t(kConsumers) * kItems);
  CHECK(sum.load() == want);
}

TEST_CASE("join waits for the child; children finish before their parents") {
  Session s;
  std::atomic<int> order{0};
  std::vector<int> finished(64, -1);
  auto h = ut::spawn([&] {
    std::vector<ut::Handle> kids;
    for (int i = 0; i < 63; ++i)
      kids.push_back(ut::spawn([&, i] {
        ut::sleep_for(std::chrono::microseconds(50 * (i % 7)));
        finished[i + 1] = order.fetch_add(1);
      }));
    for (auto& k : kids) k.join();  // join from a uthread
    finished[0] = order.fetch_add(1);
  });
  h.join();  // join from a plain thread
  CHECK(finished[0] == 63);
  for (int i = 1; i < 64; ++i) CHECK(finished[i] >= 0);
  CHECK(finished[0] > *std::max_element(finished.begin() + 1, finished.end()));
}

TEST_CASE("sleep_for sleeps at least as asked, and others run meanwhile") {
  Session s;
  std::atomic<int> ran{0};
  auto t0 = std::chrono::steady_clock::now();
  std::chrono::steady_clock::time_point woke;
  auto sleeper = ut::spawn([&] {
    ut::sleep_for(std::chrono::milliseconds(5));
    woke = std::chrono::steady_clock::now();
  });
  std::vector<ut::Handle> others;
  for (int i = 0; i < 10; ++i) others.push_back(ut::spawn([&] { ++ran; }));
  for (auto& o : others) o.join();
  sleeper.join();
  CHECK(ran.load() == 10);
  CHECK(woke - t0 >= std::chrono::milliseconds(5));
}

TEST_CASE("64 uthreads missing on the same page: one fetch, all woken") {
  Session s;
  const std::uint64_t pages = 3 * (16ull << 20) / 4096;  // 3x the frame pool
  FarArray<std::uint64_t> a(pages * kPer);
  a.store(7 * kPer + 1, 0xfeedface);
  for (std::uint64_t p = 8; p < pages; ++p) a.store(p * kPer, p);  // pushes page 7 out
  const Stats before = stats();
  std::atomic<int> right{0};
  ut::WaitGroup wg;
  for (int i = 0; i < 64; ++i) {
    wg.add(1);
    ut::spawn([&] {
      Scope sc;
      if (a.get(sc, 7 * kPer + 1) == 0xfeedface) ++right;
      wg.done();
    }).detach();
  }
  wg.wait();
  const Stats after = stats();
  CHECK(right.load() == 64);
  CHECK(after.fetches - before.fetches == 1);
}

TEST_CASE("uthreads racing the evictor keep far memory exact") {
  Session s;
  const std::uint64_t pages = 10000;  // ~2.5x the frame pool
  const int kUthreads = 128;
  FarArray<std::uint64_t> a(pages * kPer);
  std::vector<std::uint64_t> shadow(pages * kPer, 0);
  std::atomic<std::uint64_t> bad{0};
  ut::WaitGroup wg;
  const int kOps = test::kSanitized ? 200 : 3000;
  for (int t = 0; t < kUthreads; ++t) {
    wg.add(1);
    ut::spawn([&, t] {
      test::Rng rng(t + 11);
      for (int op = 0; op < kOps; ++op) {
        std::uint64_t r = rng.next();
        std::uint64_t i = (r % pages) * kPer + t;  // word t of each page is this uthread's
        Scope sc;
        if (a.get(sc, i) != shadow[i]) ++bad;
        std::uint64_t v = test::mix(i, op + 1);
        a.mut(sc, i) = v;
        shadow[i] = v;
        if (op % 64 == 0) ut::yield();  // switch while inside a scope
        if (a.get(sc, i) != v) ++bad;
      }
      wg.done();
    }).detach();
  }
  wg.wait();
  CHECK(bad.load() == 0);
  for (std::uint64_t i = 0; i < pages * kPer; i += kPer)
    for (std::uint64_t k = 0; k < kUthreads; ++k) {
      Scope sc;
      if (a.get(sc, i + k) != shadow[i + k]) ++bad;
    }
  CHECK(bad.load() == 0);
  INFO(stats_json());
  CHECK(stats().evictions > 0);
}

TEST_CASE("uthreads waiting on sockets park; the scheduler runs others and wakes them when data comes") {
  Session s;
  constexpr int kPairs = 300;
  std::vector<std::array<int, 2>> pairs(kPairs);
  for (auto& p : pairs) REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, p.data()) == 0);
  std::atomic<int> got{0}, wrong{0};
  std::atomic<bool> readers_done{false};
  std::atomic<std::uint64_t> ticks{0};
  ut::WaitGroup wg;
  for (int i = 0; i < kPairs; ++i) {
    wg.add(1);
    ut::spawn([&, i] {
      int v = -1;
      for (;;) {
        ssize_t n = read(pairs[i][0], &v, sizeof v);
        if (n == sizeof v) break;
        if (n >= 0 || errno != EAGAIN) {  // (no Catch2 assertions off the test's thread)
          ++wrong;
          break;
        }
        short ev = ut::wait_fd(pairs[i][0], POLLIN);
        if (!(ev & POLLIN)) ++wrong;
      }
      if (v != i) ++wrong;
      ++got;
      wg.done();
    }).detach();
  }
  // A uthread that keeps running while the readers wait: they must not block the scheduler.
  auto ticker = ut::spawn([&] {
    while (!readers_done.load()) {
      ++ticks;
      ut::sleep_for(std::chrono::microseconds(200));
    }
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));  // readers parked, schedulers idle in epoll
  CHECK(got.load() == 0);
  CHECK(ticks.load() > 0);
  // A plain thread writes (cross-thread wake-ups through the eventfd), in a scrambled order.
  for (int k = 0; k < kPairs; ++k) {
    int i = (k * 7) % kPairs;
    REQUIRE(write(pairs[i][1], &i, sizeof i) == sizeof i);
    if (k % 50 == 0) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  wg.wait();
  readers_done.store(true);
  ticker.join();
  CHECK(got.load() == kPairs);
  CHECK(wrong.load() == 0);
  for (auto& p : pairs) close(p[0]), close(p[1]);
}

TEST_CASE("wait_fd reports a closed peer, takes a regular file as ready, and works from a plain thread") {
  Session s;
  int sv[2];
  REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv) == 0);
  short hup = 0, file = 0;
  auto a = ut::spawn([&] { hup = ut::wait_fd(sv[0], POLLIN); });
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  close(sv[1]);
  a.join();
  CHECK((hup & (POLLHUP | POLLIN)) != 0);
  int f = open("/proc/self/stat", O_RDONLY);
  REQUIRE(f >= 0);
  ut::spawn([&] { file = ut::wait_fd(f, POLLIN); }).join();
  CHECK((file & POLLIN) != 0);
  close(f);
  int p[2];
  REQUIRE(pipe(p) == 0);
  REQUIRE(write(p[1], "x", 1) == 1);
  CHECK((ut::wait_fd(p[0], POLLIN) & POLLIN) != 0);  // plain thread: poll(2)
  close(p[0]), close(p[1]), close(sv[0]);
}
