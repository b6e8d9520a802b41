// farmem-kv's store under concurrency: threads set, get and delete over one
// key space while the evictor pushes values out (8 MiB local, several times
// that stored). Every value carries its key, its version and a checksum, so a torn,
// stale-chunk or misplaced read shows up; at the end each thread's last write
// per key must be what a get returns.
#include <catch2/catch.hpp>

#include <cstdio>
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
