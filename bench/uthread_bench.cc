// farmem-uthread-bench: the cost of a uthread context switch (yield), of
// spawn+join, and of a mutex hand-off between uthreads, on one scheduler.
#include <chrono>
#include <cstdio>
#include <vector>

#include "farmem/runtime.hpp"
#include "farmem/uthread.hpp"

namespace ut = farmem::uthread;

int main() {
  farmem::Config cfg = farmem::Config::from_env();
  if (cfg.local_mem_bytes == 0) cfg.local_mem_bytes = 16ull << 20;
  try {
    farmem::init(cfg);
  } catch (const farmem::Error& e) {
    std::fprintf(stderr, "farmem-uthread-bench: %s\n", e.what());
    return 2;
  }
  ut::start(1);
  const long kYields = 5'000'000;
  double yield_ns = 0, spawn_ns = 0, mutex_ns = 0;
  {
    // Two uthreads yielding to each other: each yield is one switch away and one back in.
    auto t0 = std::chrono::steady_clock::now();
    auto a = ut::spawn([&] { for (long i = 0; i < kYields; ++i) ut::yield(); });
    auto b = ut::spawn([&] { for (long i = 0; i < kYields; ++i) ut::yield(); });
    a.join();
    b.join();
    yield_ns = std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count() /
               (2.0 * kYields);
  }
  {
    const int kN = 200'000;
    std::chrono::steady_clock::time_point t0, t1;
    ut::spawn([&] {
      t0 = std::chrono::steady_clock::now();
      for (int i = 0; i < kN; ++i) ut::spawn([] {}).join();
      t1 = std::chrono::steady_clock::now();
    }).join();
    spawn_ns = std::chrono::duration<double, std::nano>(t1 - t0).count() / kN;
  }
  {
    const long kN = 1'000'000;
    ut::Mutex m;
    long counter = 0;
    auto t0 = std::chrono::steady_clock::now();
    std::vector<ut::Handle> hs;
    for (int t = 0; t < 4; ++t)
      hs.push_back(ut::spawn([&] {
        for (long i = 0; i < kN / 4; ++i) {
          m.lock();
          ++counter;
          if (i % 8 == 0) ut::yield();  // contend: others queue on the mutex
          m.unlock();
        }
      }));
    for (auto& h : hs) h.join();
    mutex_ns = std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count() / kN;
  }
  ut::stop();
  std::printf("{\"bench\":\"uthread\",\"yield_switch_ns\":%.1f,\"spawn_join_ns\":%.1f,\"mutex_lock_unlock_ns\":%.1f}\n",
              yield_ns, spawn_ns, mutex_ns);
  return 0;
}
