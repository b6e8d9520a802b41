// farmem-kv's store under concurrency: threads set, get and delete over one
// key space while the evictor pushes values out (8 MiB local, several times
// that stored). Every value carries its key, its version and a checksum, so a torn,
// stale-chunk or misplaced read shows up; at the end each thread's last write
// per key must be what a get returns.
#include <catch2/catch.hpp>

#include <cstdio>
#include <future>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "../../apps/farmem-kv/store.hpp"
#include "far/test_support.hpp"
#include "farmem/far.hpp"
#include "farmem/uthread.hpp"

using namespace farmem;

namespace {
std::string make_value(const std::string& key, std::uint64_t version) {
  test::Rng r(version * 131 + key.size());
  const std::size_t n = 64 + r.next() % (test::kSanitized ? 12000 : 20000);
  std::string v = key + "#" + std::to_string(version) + "#";
  while (v.size() < n) v += static_cast<char>('a' + (test::mix(v.size(), version) % 26));
  std::uint64_t sum = 0;
  for (char c : v) sum = sum * 31 + static_cast<unsigned char>(c);
  return v + "#" + std::to_string(sum);
}

std::string key_name(unsigned t, unsigned k) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "t%u:%u", t, k);
  return buf;
}

bool consistent(const std::string& key, const std::string& v) {
  std::size_t last = v.rfind('#');
  if (last == std::string::npos || v.compare(0, key.size() + 1, key + "#") != 0) return false;
  std::uint64_t sum = 0;
  for (std::size_t i = 0; i < last; ++i) sum = sum * 31 + static_cast<unsigned char>(v[i]);
  return v.substr(last + 1) == std::to_string(sum);
}
// Runs the workload with kThreads workers; uthreads = true runs them as
// uthreads on two schedulers (far misses and lock waits park inside the store).
void run_workload(bool uthreads) {
  if (!initialized()) {
    Config cfg = Config::from_env();
    cfg.local_mem_bytes = 8ull << 20;
    init(cfg);
  }
  const std::uint64_t evictions_before = stats().evictions;
  farmem_kv::Store store(1ull << 30);
  const unsigned kThreads = uthreads ? 32 : 4;
  const unsigned keys_per_thread = (test::kSanitized ? 4000 : 8000) / kThreads;
  const unsigned ops = (test::kSanitized ? 12000 : 120000) / kThreads;
  // Per thread and own key: the last version written, and whether it is stored.
  std::vector<std::vector<std::uint64_t>> version(kThreads, std::vector<std::uint64_t>(keys_per_thread, 0));
  std::vector<std::vector<char>> present(kThreads, std::vector<char>(keys_per_thread, 0));
  std::vector<unsigned> torn(kThreads, 0), lost(kThreads, 0);
  std::vector<std::thread> ts;
  std::vector<uthread::Handle> us;
  if (uthreads) uthread::start(2);
  for (unsigned t = 0; t < kThreads; ++t) {
    auto worker = [&, t] {
      test::Rng r(t + 1);
      for (unsigned i = 0; i < ops; ++i) {
        // Own keys are written and checked exactly; everyone's keys are read.
        const unsigned k = static_cast<unsigned>(r.next() % keys_per_thread);
        const std::string own = key_name(t, k);
        const std::string any = key_name(static_cast<unsigned>(r.next() % kThreads), k);
        switch (r.next() % 4) {
          case 0:
          case 1:
            if (store.set(own, t, make_value(own, ++version[t][k])) != farmem_kv::Store::Result::Stored)
              ++lost[t];
            present[t][k] = 1;
            break;
          case 2:
            lost[t] += store.remove(own) != static_cast<bool>(present[t][k]);
            present[t][k] = 0;
            break;
          default:
            if (auto v = store.get(any)) torn[t] += !consistent(any, v->data);
        }
        if (i % 7 == 0) {  // own key: exactly the last version written, or absent after a delete
          auto v = store.get(own);
          if (!present[t][k]) lost[t] += v.has_value();
          else lost[t] += !v || v->data != make_value(own, version[t][k]);
        }
      }
    };
    if (uthreads) us.push_back(uthread::spawn(worker));
    else ts.emplace_back(worker);
  }
  for (auto& th : ts) th.join();
  for (auto& u : us) u.join();
  if (uthreads) uthread::stop();
  unsigned bad_torn = 0, bad_lost = 0;
  for (unsigned t = 0; t < kThreads; ++t) bad_torn += torn[t], bad_lost += lost[t];
  CHECK(bad_torn == 0);
  CHECK(bad_lost == 0);
  const Stats s = stats();
  INFO("fetches " << s.fetches << ", evictions " << s.evictions);
  CHECK(s.evictions > evictions_before);
}
}  // namespace

TEST_CASE("the far-memory key-value store keeps every value whole under concurrency and eviction") {
  run_workload(false);
}

TEST_CASE("the same from 32 uthreads on two schedulers, parking on far misses inside the store's locks") {
  run_workload(true);
}

namespace {
void init_small() {
  if (!initialized()) {
    Config cfg = Config::from_env();
    cfg.local_mem_bytes = 8ull << 20;
    init(cfg);
  }
}
std::string numbered(const char* prefix, unsigned i) {  // (not a + to_string: GCC 12 warns falsely)
  std::string s(prefix);
  s += std::to_string(i);
  return s;
}
std::string data_of(farmem_kv::Store& s, const std::string& key) {
  auto v = s.get(key);
  return v ? v->data : "<missing>";
}
}  // namespace

TEST_CASE("a get waiting for its far value holds up no other key of its shard, and its chunk outlives a delete") {
  init_small();
  std::promise<void> reader_parked, go_on;
  std::shared_future<void> go = go_on.get_future().share();
  farmem_kv::Store::Options o;
  o.capacity = 64ull << 20;
  o.before_far_read = [&](std::string_view key) {
    if (key == "slow") reader_parked.set_value(), go.wait();
  };
  farmem_kv::Store store(o);
  // Two more keys behind the same shard lock as "slow".
  std::vector<std::string> same;
  for (unsigned i = 0; same.size() < 2; ++i)
    if (auto k = numbered("k", i); farmem_kv::Store::shard_index(k) == farmem_kv::Store::shard_index("slow"))
      same.push_back(k);
  const std::string old_value(3000, 'o');
  REQUIRE(store.set("slow", 1, old_value) == farmem_kv::Store::Result::Stored);
  REQUIRE(store.set(same[0], 2, "neighbour") == farmem_kv::Store::Result::Stored);
  const std::uint64_t used_before = store.class_stats().back().used_chunks;
  std::optional<farmem_kv::Value> slow;
  std::thread reader([&] { slow = store.get("slow"); });
  reader_parked.get_future().wait();
  // The reader holds "slow" pinned but not the shard lock: all of these run now.
  auto others = std::async(std::launch::async, [&] {
    bool ok = data_of(store, same[0]) == "neighbour";
    ok &= store.set(same[1], 0, "new") == farmem_kv::Store::Result::Stored;
    ok &= store.remove("slow");
    // Values of the same size class: none may land in the pinned chunk.
    for (int i = 0; i < 20; ++i) ok &= store.set(numbered("fill", i), 0, std::string(3000, 'x')) ==
                                        farmem_kv::Store::Result::Stored;
    return ok;
  });
  const bool others_ran = others.wait_for(std::chrono::seconds(20)) == std::future_status::ready;
  go_on.set_value();
  reader.join();
  REQUIRE(others_ran);  // else the shard lock was held across the far read
  CHECK(others.get());
  REQUIRE(slow.has_value());
  CHECK(slow->data == old_value);  // the deleted value's chunk was not reused while read
  CHECK(slow->flags == 1);
  CHECK(data_of(store, "slow") == "<missing>");
  // The pinned chunk went back to its class when the reader let go.
  CHECK(store.class_stats().back().used_chunks == used_before - 1 + 20);
}

TEST_CASE("memcached semantics: add, replace, append, prepend, cas, incr, decr, touch, expiry, flush") {
  init_small();
  std::int64_t now = 1'800'000'000;
  farmem_kv::Store::Options o;
  o.capacity = 16ull << 20;
  o.clock = [&] { return now; };
  farmem_kv::Store s(o);
  using R = farmem_kv::Store::Result;
  using M = farmem_kv::Store::Mode;
  CHECK(s.store(M::Add, "a", 5, 0, "1") == R::Stored);
  CHECK(s.store(M::Add, "a", 5, 0, "2") == R::NotStored);
  CHECK(s.store(M::Replace, "b", 0, 0, "2") == R::NotStored);
  CHECK(s.store(M::Append, "a", 9, 0, "0") == R::Stored);
  CHECK(s.store(M::Prepend, "a", 9, 0, "9") == R::Stored);
  auto v = s.get("a");
  REQUIRE(v);
  CHECK(v->data == "910");
  CHECK(v->flags == 5);  // append and prepend keep the flags
  CHECK(s.store(M::Cas, "a", 0, 0, "x", v->cas + 1) == R::Exists);
  CHECK(s.store(M::Cas, "nokey", 0, 0, "x", 1) == R::NotFound);
  CHECK(s.store(M::Cas, "a", 0, 0, "100", v->cas) == R::Stored);
  std::uint64_t r = 0;
  using D = farmem_kv::Store::DeltaResult;
  CHECK(s.delta("a", false, 1, r) == D::Ok);
  CHECK(r == 99);
  CHECK(data_of(s, "a") == "99 ");  // memcached keeps the length, padded with spaces
  CHECK(s.delta("a", true, UINT64_MAX, r) == D::Ok);
  CHECK(r == 98);  // wraps at 2^64
  CHECK(s.delta("a", false, 1000, r) == D::Ok);
  CHECK(r == 0);  // decr stops at 0
  CHECK(s.delta("nokey", true, 1, r) == D::NotFound);
  s.set("text", 0, "abc");
  CHECK(s.delta("text", true, 1, r) == D::NonNumeric);
  // Expiry: relative, absolute (over 30 days), negative; touch moves it.
  CHECK(s.store(M::Set, "rel", 0, s.expiry_of(10), "x") == R::Stored);
  CHECK(s.store(M::Set, "abs", 0, s.expiry_of(now + 20), "x") == R::Stored);
  CHECK(s.store(M::Set, "neg", 0, s.expiry_of(-1), "x") == R::Stored);
  CHECK(data_of(s, "neg") == "<missing>");
  CHECK(s.touch("abs", s.expiry_of(100)));
  now += 10;
  CHECK(data_of(s, "rel") == "<missing>");
  CHECK(data_of(s, "abs") == "x");
  CHECK(s.store(M::Add, "rel", 0, 0, "y") == R::Stored);  // an expired key is free for add
  // The sweep reclaims what expired without being read.
  CHECK(s.store(M::Set, "unread", 0, s.expiry_of(5), std::string(100000, 'u')) == R::Stored);
  now += 5;
  const std::uint64_t bytes_before = s.value_bytes();
  CHECK(s.sweep() == 1);
  CHECK(s.value_bytes() == bytes_before - 100000 - 6);
  CHECK(s.counters().expired_unfetched.load() >= 1);
  // flush_all with a delay: what was stored before the deadline goes at the deadline.
  s.flush(30);
  CHECK(data_of(s, "abs") == "x");
  now += 30;
  CHECK(data_of(s, "abs") == "<missing>");
  s.set("after", 0, "z");
  CHECK(data_of(s, "after") == "z");
  s.flush(0);
  CHECK(s.items() == 0);
  s.set("after", 0, "z");
  CHECK(data_of(s, "after") == "z");
}

TEST_CASE("a store refuses at capacity and keeps every value; a cache drops the coldest, keeps a hot one, moves slabs") {
  init_small();
  using R = farmem_kv::Store::Result;
  const std::string value(4000, 'v');  // 4 KiB chunks: 256 a slab, 512 in 2 MiB
  farmem_kv::Store store(2ull << 20);
  unsigned stored = 0;
  while (store.set(numbered("k", stored), 0, value) == R::Stored) ++stored;
  CHECK(stored == 512);
  CHECK(data_of(store, "k0") == value);
  farmem_kv::Store::Options o;
  o.capacity = 2ull << 20;
  o.cache = true;
  farmem_kv::Store cache(o);
  REQUIRE(cache.set("hot", 0, value) == R::Stored);
  for (unsigned i = 0; i < 3000; ++i) {
    REQUIRE(cache.set(numbered("k", i), 0, value) == R::Stored);
    if (i % 64 == 0) REQUIRE(data_of(cache, "hot") == value);  // read often: it stays
  }
  CHECK(cache.items() <= 512);
  CHECK(cache.counters().evictions.load() >= 3000 - 512);
  CHECK(data_of(cache, "hot") == value);
  CHECK(data_of(cache, "k2999") == value);
  CHECK(data_of(cache, "k0") == "<missing>");
  // Every slab now holds 4 KiB chunks: bigger values take slabs over from them.
  CHECK(store.set("big", 0, std::string(100000, 'b')) == R::OutOfMemory);  // a store refuses
  for (unsigned i = 0; i < 30; ++i) {
    const std::string big(100000, static_cast<char>('A' + i % 26));
    REQUIRE(cache.set(numbered("big", i), 0, big) == R::Stored);
    REQUIRE(data_of(cache, numbered("big", i)) == big);
  }
  CHECK(data_of(cache, "big29") == std::string(100000, 'A' + 29 % 26));
  CHECK(cache.far_bytes() == 2ull << 20);  // within capacity all along
}
