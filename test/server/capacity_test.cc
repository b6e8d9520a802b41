// The capacity account farmem-server's listeners share (server/capacity.cc)
// and the leases sessions take from it (server/session_memory.cc).
#include <catch2/catch.hpp>

#include <atomic>
#include <thread>
#include <vector>

#include "server/capacity.hpp"
#include "server/session_memory.hpp"

using farmem::server::CapacityAccount;
using farmem::server::SessionMemory;

namespace {
constexpr std::uint64_t kMiB = 1 << 20;
}  // namespace

TEST_CASE("grant and give back against one capacity") {
  CapacityAccount a(3ull << 30);
  REQUIRE(a.grant(2560 * kMiB));
  CHECK_FALSE(a.grant(1ull << 30));
  CHECK(a.usage().granted == 2560 * kMiB);  // a refusal grants nothing
  REQUIRE(a.grant(512 * kMiB));             // exactly what is left
  a.session_opened();
  CHECK(a.describe() == "3072 MiB of 3072 MiB are in use by 1 session");
  a.give_back(3ull << 30);
  a.session_closed();
  CHECK(a.usage().granted == 0);
  CHECK(a.usage().sessions == 0);
}

TEST_CASE("listener threads never grant more than the capacity together") {
  CapacityAccount a(10 * kMiB);
  std::atomic<int> held{0}, most{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&] {
      for (int i = 0; i < 20000; ++i) {
        if (!a.grant(3 * kMiB)) continue;
        int now = held.fetch_add(3) + 3;
        for (int m = most.load(); now > m && !most.compare_exchange_weak(m, now);) {
        }
        held.fetch_sub(3);
        a.give_back(3 * kMiB);
      }
    });
  for (auto& t : threads) t.join();
  CHECK(most.load() <= 9);  // three 3 MiB grants fit in 10 MiB, never four
  CHECK(a.usage().granted == 0);
}

TEST_CASE("a session asks for any address space and is granted memory as it writes") {
  CapacityAccount a(64 * kMiB);
  std::string why;
  auto s = SessionMemory::map(a, 64ull << 30, &why);  // 64 GiB of address space on a 64 MiB server
  REQUIRE(s);
  CHECK(a.usage().sessions == 1);
  CHECK(a.usage().granted == 0);  // nothing written, nothing granted
  REQUIRE(s->charge_write(40ull << 30, 4096, &why));
  CHECK(s->used_bytes() == 4096);
  CHECK(a.usage().granted == 4096);
  REQUIRE(s->charge_write(40ull << 30, 4096, &why));  // a rewrite costs nothing more
  CHECK(s->used_bytes() == 4096);
  REQUIRE(s->charge_write(0, 1024, &why));  // a piece takes its whole page
  REQUIRE(s->charge_write(3072, 2048, &why));  // one piece across two pages takes both
  CHECK(s->used_bytes() == 3 * 4096);
  CHECK(a.usage().granted == 3 * 4096);
}

TEST_CASE("a full server refuses the write that does not fit, and takes it once memory comes back") {
  CapacityAccount a(64 * kMiB);
  std::string why;
  auto holder = SessionMemory::map(a, 1ull << 30, &why);
  auto other = SessionMemory::map(a, 1ull << 30, &why);
  REQUIRE(holder->charge_write(0, 60 * kMiB, &why));
  REQUIRE(other->charge_write(0, 4 * kMiB, &why));  // the last 4 MiB
  CHECK(a.usage().granted == 64 * kMiB);
  CHECK_FALSE(other->charge_write(4 * kMiB, 4096, &why));
  CHECK(why == "the server is full: 64 MiB of 64 MiB are in use by 2 sessions (farmem-server --capacity); "
               "add servers to the pool or give this one more");
  CHECK(other->used_bytes() == 4 * kMiB);  // the refused write marked nothing
  holder->discard(0, 60 * kMiB);
  CHECK(holder->used_bytes() == 0);
  CHECK(a.usage().granted == 4 * kMiB);  // the holder's lease went back
  REQUIRE(other->charge_write(4 * kMiB, 4096, &why));
  holder.reset();
  other.reset();
  CHECK(a.usage().granted == 0);
  CHECK(a.usage().sessions == 0);
}

TEST_CASE("a discard frees only whole pages, and sizes out of bounds are refused") {
  CapacityAccount a(64 * kMiB);
  std::string why;
  CHECK_FALSE(SessionMemory::map(a, 0, &why));
  CHECK_FALSE(SessionMemory::map(a, SessionMemory::kMaxBytes + 1, &why));
  CHECK(why.find("ask for less (FARMEM_FAR_MEM)") != std::string::npos);
  auto s = SessionMemory::map(a, 1 * kMiB, &why);
  CHECK(s->in_range(1 * kMiB - 4096, 4096));
  CHECK_FALSE(s->in_range(1 * kMiB - 4096, 8192));
  REQUIRE(s->charge_write(0, 8192, &why));
  s->discard(512, 4096);  // covers no whole page
  CHECK(s->used_bytes() == 8192);
  s->discard(4096, 4096);
  CHECK(s->used_bytes() == 4096);
}
