// The embedded memory server: far pages do not count as our resident memory,
// the server holds them, and it is gone after shutdown.
#include <catch2/catch.hpp>

#include <dirent.h>
#include <unistd.h>

#include <fstream>
#include <string>

#include "farmem/far.hpp"
#include "far/test_support.hpp"

using namespace farmem;

namespace {
std::uint64_t status_kib(const char* key) {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind(key, 0) == 0) return std::stoull(line.substr(line.find(':') + 1));
  return 0;
}

std::string children() {
  std::string all;
  DIR* d = opendir("/proc/self/task");
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] == '.') continue;
    std::ifstream f(std::string("/proc/self/task/") + e->d_name + "/children");
    std::string s;
    std::getline(f, s);
    all += s;
  }
  closedir(d);
  return all;
}
}  // namespace

TEST_CASE("far memory lives in the server, not in our resident set") {
  const std::uint64_t budget = 32ull << 20;
  const std::uint64_t bytes = test::test_bytes(512ull << 20, 128ull << 20);
  Config cfg = Config::from_env();
  cfg.local_mem_bytes = budget;
  cfg.far_mem_bytes = 2 * bytes;
  init(cfg);
  CHECK_FALSE(children().empty());  // the memory server runs as our child

  const std::uint64_t rss_before = status_kib("VmRSS:") * 1024;
  {
    FarArray<std::uint64_t> a(bytes / 8);
    for (std::uint64_t i = 0; i < a.size(); i += 512) a.store(i, i + 1);
    std::uint64_t bad = 0;
    for (std::uint64_t i = 0; i < a.size(); i += 512) bad += a.load(i) != i + 1;
    CHECK(bad == 0);
    const std::uint64_t rss = status_kib("VmRSS:") * 1024;
    INFO("VmRSS " << (rss >> 20) << " MiB, before " << (rss_before >> 20) << " MiB");
    // The frame pool fills as it is used; beyond it, touching far memory must
    // not grow RSS past page-table pages (8 bytes per far page) and small
    // bookkeeping.
    if (test::kSanitized)
      WARN("RSS bound not checked: sanitizer shadow memory counts in VmRSS");
    else
      CHECK(rss <= rss_before + budget + bytes / 512 + (4ull << 20));
    Stats st = stats();
    CHECK(st.far_bytes >= bytes / 2);
    CHECK(st.resident_bytes <= budget);
  }
  shutdown();
  CHECK(children().empty());  // server reaped
}
