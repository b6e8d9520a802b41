// farmem-compact-bench: what the compressed tier's compaction (FARMEM_COMPACT)
// gives back after a program's far footprint shrinks. It fills far memory with
// compressible pages (--data, text by default), frees all but one page in
// --keep, scattered, so every span of the server keeps a piece or two, then
// watches what the server holds (the tier's stored_bytes) for --wait seconds,
// checks every page it kept, and prints one JSON line (with the resident
// memory of the embedded memory server, its child, when there is one). Run it with
// FARMEM_COMPACT=0 and without to see the difference (docs/benchmarks.md).
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "farmem/far.hpp"
#include "farmem/runtime.hpp"
#include "page_data.hpp"

namespace {

void usage() {
  std::fprintf(stderr,
               "usage: farmem-compact-bench [--far SIZE] [--keep N] [--wait SECONDS] [--data KIND]\n"
               "  --far    bytes of far memory filled (default 256M)\n"
               "  --keep   one page in N is kept, the others freed (default 4)\n"
               "  --wait   seconds to watch what the server holds after the frees (default 5)\n"
               "  --data   text (default), ints or mixed (bench/page_data.hpp)\n"
               "  FARMEM_COMPRESS (default here: lz4), FARMEM_COMPACT and FARMEM_LOCAL_MEM (default here:\n"
               "  16M) and the other FARMEM_* variables apply (docs/configuration.md).\n");
}

// A number in the compressed tier's statistics, or 0.
std::uint64_t stat(const std::string& json, const char* key) {
  const std::string k = std::string("\"") + key + "\":";
  const std::size_t at = json.find(k);
  return at == std::string::npos ? 0 : std::strtoull(json.c_str() + at + k.size(), nullptr, 10);
}

// Resident bytes of this process's children (the embedded memory server), or 0.
std::uint64_t children_rss() {
  std::ifstream kids("/proc/self/task/" + std::to_string(getpid()) + "/children");
  std::uint64_t total = 0;
  for (long pid; kids >> pid;) {
    std::ifstream st("/proc/" + std::to_string(pid) + "/status");
    for (std::string line; std::getline(st, line);)
      if (line.rfind("VmRSS:", 0) == 0) total += std::strtoull(line.c_str() + 6, nullptr, 10) << 10;
  }
  return total;
}

}  // namespace

int main(int argc, char** argv) {
  std::uint64_t far = 256ull << 20, keep = 4, wait_s = 5;
  bench::PageData data = bench::PageData::Text;
  try {
    for (int i = 1; i < argc; ++i) {
      const std::string a = argv[i];
      auto value = [&]() -> std::string {
        if (i + 1 >= argc) throw farmem::Error(a + " needs a value");
        return argv[++i];
      };
      if (a == "--far") far = farmem::parse_size(value(), "--far");
      else if (a == "--keep") keep = std::strtoull(value().c_str(), nullptr, 10);
      else if (a == "--wait") wait_s = std::strtoull(value().c_str(), nullptr, 10);
      else if (a == "--data") {
        const std::string d = value();
        if (!bench::parse_page_data(d, &data) || data == bench::PageData::Zeros || data == bench::PageData::Random)
          throw farmem::Error("--data '" + d + "' is not text, ints or mixed");
      } else if (a == "--help" || a == "-h") {
        usage();
        return 0;
      } else {
        throw farmem::Error("unknown option '" + a + "' (see --help)");
      }
    }
    if (keep < 2) throw farmem::Error("--keep must be 2 or more (one page in N is kept)");
    farmem::Config cfg = farmem::Config::from_env();
    if (!std::getenv("FARMEM_COMPRESS")) cfg.compress = "lz4";
    if (!std::getenv("FARMEM_LOCAL_MEM")) cfg.local_mem_bytes = 16ull << 20;
    if (cfg.compress == "none") throw farmem::Error("FARMEM_COMPRESS=none: compaction is the compressed tier's; set FARMEM_COMPRESS=lz4 or zstd, or leave it unset (lz4 here)");
    if (!std::getenv("FARMEM_FAR_MEM")) cfg.far_mem_bytes = 2 * far;
    farmem::init(cfg);

    const std::uint64_t pages = far / 4096;
    const std::uint64_t base = farmem::far_alloc(pages * 4096);
    std::vector<std::uint64_t> page(512);
    for (std::uint64_t p = 0; p < pages; ++p) {
      std::memset(page.data(), 0, 4096);
      bench::fill_page(data, p, page.data());
      farmem::copy_to_far(base + p * 4096, page.data(), 4096);
    }
    std::this_thread::sleep_for(std::chrono::seconds(1));  // the evictor settles
    const std::uint64_t filled = stat(farmem::stats_json(), "stored_bytes"), rss_filled = children_rss();
    for (std::uint64_t p = 0; p < pages; ++p)
      if (p % keep != 0) farmem::far_free(base + p * 4096, 4096);
    const std::string freed_json = farmem::stats_json();
    const std::uint64_t freed = stat(freed_json, "stored_bytes");
    const auto t0 = std::chrono::steady_clock::now();
    std::this_thread::sleep_for(std::chrono::seconds(wait_s));
    const std::string after = farmem::stats_json();
    const std::uint64_t rss_after = children_rss();
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    // Every kept page, exact.
    std::vector<std::uint64_t> want(512);
    bool ok = true;
    for (std::uint64_t p = 0; p < pages && ok; p += keep) {
      std::memset(want.data(), 0, 4096);
      bench::fill_page(data, p, want.data());
      farmem::copy_from_far(page.data(), base + p * 4096, 4096);
      ok = std::memcmp(page.data(), want.data(), 4096) == 0;
    }
    std::printf(
        "{\"far_bytes\":%llu,\"keep\":%llu,\"compact_pct\":%u,\"stored_after_fill\":%llu,\"stored_after_free\":%llu,"
        "\"stored_after_wait\":%llu,\"piece_bytes_after_wait\":%llu,\"moved_pieces\":%llu,\"wait_s\":%.1f,"
        "\"server_rss_after_fill\":%llu,\"server_rss_after_wait\":%llu,\"verified\":%s}\n",
        static_cast<unsigned long long>(far), static_cast<unsigned long long>(keep), cfg.compact_pct,
        static_cast<unsigned long long>(filled), static_cast<unsigned long long>(freed),
        static_cast<unsigned long long>(stat(after, "stored_bytes")),
        static_cast<unsigned long long>(stat(after, "piece_bytes")),
        static_cast<unsigned long long>(stat(after, "moved_pieces")), secs,
        static_cast<unsigned long long>(rss_filled), static_cast<unsigned long long>(rss_after), ok ? "true" : "false");
    if (!ok) {
      std::fprintf(stderr, "farmem-compact-bench: a kept page came back wrong\n");
      return 2;
    }
    return 0;
  } catch (const farmem::Error& e) {
    std::fprintf(stderr, "farmem-compact-bench: %s\n", e.what());
    return 1;
  }
}
