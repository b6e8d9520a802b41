// The capacity account farmem-server's listeners share (server/capacity.cc)
// and the leases sessions take from it (server/session_memory.cc).
#include <catch2/catch.hpp>

#include <atomic>
#include <thread>
#include <vector>

#include "server/capacity.hpp"
#include "server/session_memory.hpp"

using farmem::server::CapacityAccount;
using farmem::server::ClientUsage;
using farmem::server::SessionMemory;

namespace {
constexpr std::uint64_t kMiB = 1 << 20;
}  // namespace

TEST_CASE("grant and give back against one capacity") {
  CapacityAccount a(3ull << 30);
  auto c = std::make_shared<ClientUsage>();
  REQUIRE(a.grant(2560 * kMiB, *c));
  CHECK_FALSE(a.grant(1ull << 30, *c));
  CHECK(a.usage().granted == 2560 * kMiB);  // a refusal grants nothing
  REQUIRE(a.grant(512 * kMiB, *c));         // exactly what is left
  a.session_opened(c);
  CHECK(a.describe() == "3072 MiB of 3072 MiB are in use by 1 session");
  CHECK(c->granted.load() == 3ull << 30);
  a.give_back(3ull << 30, *c);
  a.session_closed(c);
  CHECK(a.usage().granted == 0);
  CHECK(a.usage().sessions == 0);
  CHECK(a.clients().empty());
}

TEST_CASE("listener threads never grant more than the capacity together") {
  CapacityAccount a(10 * kMiB);
  std::atomic<int> held{0}, most{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&] {
      ClientUsage c;
      for (int i = 0; i < 20000; ++i) {
        if (!a.grant(3 * kMiB, c)) continue;
        int now = held.fetch_add(3) + 3;
        for (int m = most.load(); now > m && !most.compare_exchange_weak(m, now);) {
        }
        held.fetch_sub(3);
        a.give_back(3 * kMiB, c);
      }
    });
  for (auto& t : threads) t.join();
  CHECK(most.load() <= 9);  // three 3 MiB grants fit in 10 MiB, never four
  CHECK(a.usage().granted == 0);
}

TEST_CASE("a session asks for any address space and is granted memory as it writes") {
  CapacityAccount a(64 * kMiB);
  std::string why;
  auto s = SessionMemory::map(a, 64ull << 30, "10.0.0.1:1", &why);  // 64 GiB of address space on a 64 MiB server
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

TEST_CASE("each session is a client row: its grant, what it wrote and read, gone when it closes") {
  CapacityAccount a(64 * kMiB);
  std::string why;
  auto one = SessionMemory::map(a, 1ull << 30, "10.0.0.1:5000", &why);
  auto two = SessionMemory::map(a, 1ull << 30, "10.0.0.2:6000", &why);
  REQUIRE(one->charge_write(0, 8192, &why));
  REQUIRE(one->charge_write(0, 4096, &why));  // a rewrite: written, not granted again
  REQUIRE(two->charge_write(0, 4096, &why));
  two->note_read(4096);
  auto rows = a.clients();
  REQUIRE(rows.size() == 2);
  CHECK(rows[0]->session == 1);
  CHECK(rows[0]->client == "10.0.0.1:5000");
  CHECK(rows[0]->granted.load() == 8192);
  CHECK(rows[0]->written.load() == 12288);
  CHECK(rows[1]->session == 2);
  CHECK(rows[1]->granted.load() == 4096);
  CHECK(rows[1]->read.load() == 4096);
  one->discard(0, 8192);
  CHECK(rows[0]->granted.load() == 0);
  one.reset();
  rows = a.clients();
  REQUIRE(rows.size() == 1);
  CHECK(rows[0]->client == "10.0.0.2:6000");
}

TEST_CASE("a full server refuses the write that does not fit, and takes it once memory comes back") {
  CapacityAccount a(64 * kMiB);
  std::string why;
  auto holder = SessionMemory::map(a, 1ull << 30, "c", &why);
  auto other = SessionMemory::map(a, 1ull << 30, "c", &why);
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
  CHECK_FALSE(SessionMemory::map(a, 0, "c", &why));
  CHECK_FALSE(SessionMemory::map(a, SessionMemory::kMaxBytes + 1, "c", &why));
  CHECK(why.find("ask for less (FARMEM_FAR_MEM)") != std::string::npos);
  auto s = SessionMemory::map(a, 1 * kMiB, "c", &why);
  CHECK(s->in_range(1 * kMiB - 4096, 4096));
  CHECK_FALSE(s->in_range(1 * kMiB - 4096, 8192));
  REQUIRE(s->charge_write(0, 8192, &why));
  s->discard(512, 4096);  // covers no whole page
  CHECK(s->used_bytes() == 8192);
  s->discard(4096, 4096);
  CHECK(s->used_bytes() == 4096);
}
