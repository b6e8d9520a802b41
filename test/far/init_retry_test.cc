// A start that fails (here: no memory server at the address given) gives back
// what it took, the populated frame pool above all, and init() can be called
// again with a working configuration.
#include <catch2/catch.hpp>

#include <fstream>
#include <string>

#include "farmem/far.hpp"

using namespace farmem;

namespace {
std::uint64_t rss_bytes() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("VmRSS:", 0) == 0) return std::stoull(line.substr(line.find(':') + 1)) * 1024;
  return 0;
}
}  // namespace

TEST_CASE("a failed init gives its memory back and can be retried") {
  Config cfg = Config::from_env();
  cfg.local_mem_bytes = 128ull << 20;
  cfg.far_mem_bytes = 1ull << 30;
  cfg.populate_pool = true;
  cfg.backend = "tcp://127.0.0.1:1";  // nothing listens on port 1
  const std::uint64_t before = rss_bytes();
  for (int attempt = 0; attempt < 3; ++attempt) {
    CHECK_THROWS_AS(init(cfg), Error);
    CHECK_FALSE(initialized());
  }
  const std::uint64_t after = rss_bytes();
  INFO("RSS before " << (before >> 20) << " MiB, after three failed starts " << (after >> 20) << " MiB");
  CHECK(after < before + (32ull << 20));  // three populated 128 MiB pools would be 384 MiB

  cfg.backend = "shm";
  init(cfg);
  REQUIRE(initialized());
  FarArray<std::uint64_t> a((256ull << 20) / 8);
  for (std::size_t i = 0; i < a.size(); i += 512) a.store(i, i ^ 0x5a5a);
  std::uint64_t bad = 0;
  for (std::size_t i = 0; i < a.size(); i += 512) bad += a.load(i) != (i ^ 0x5a5a);
  CHECK(bad == 0);
}
