// The capacity account farmem-server's listeners share (server/capacity.cc).
#include <catch2/catch.hpp>

#include <atomic>
#include <thread>
#include <vector>

#include "server/capacity.hpp"

using farmem::server::CapacityAccount;

TEST_CASE("reserve and release against one capacity") {
  CapacityAccount a(3ull << 30);
  std::string why;
  REQUIRE(a.reserve(2560ull << 20, &why));
  CHECK(a.usage().sessions == 1);
  CHECK(a.usage().reserved == 2560ull << 20);
  CHECK_FALSE(a.reserve(1ull << 30, &why));
  CHECK(why == "the server has 512 MiB free of 3072 MiB; ask for less (FARMEM_FAR_MEM)");
  CHECK(a.usage().sessions == 1);  // a refusal reserves nothing
  CHECK_FALSE(a.reserve(0, &why));
  REQUIRE(a.reserve(512ull << 20, &why));  // exactly what is left
  a.release(2560ull << 20);
  a.release(512ull << 20);
  CHECK(a.usage().sessions == 0);
  CHECK(a.usage().reserved == 0);
}

TEST_CASE("listener threads never reserve more than the capacity together") {
  constexpr std::uint64_t kUnit = 1 << 20;
  CapacityAccount a(10 * kUnit);
  std::atomic<int> held{0}, most{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&] {
      std::string why;
      for (int i = 0; i < 20000; ++i) {
        if (!a.reserve(3 * kUnit, &why)) continue;
        int now = held.fetch_add(3) + 3;
        for (int m = most.load(); now > m && !most.compare_exchange_weak(m, now);) {
        }
        held.fetch_sub(3);
        a.release(3 * kUnit);
      }
    });
  for (auto& t : threads) t.join();
  CHECK(most.load() <= 9);  // three 3 MiB sessions fit in 10 MiB, never four
  CHECK(a.usage().reserved == 0);
  CHECK(a.usage().sessions == 0);
}
