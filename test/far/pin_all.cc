// A program that pins more far pages in one open scope than local memory holds:
// the runtime cannot free a frame and must end it with one line naming the
// cause (test/cli/cli_test.sh checks that line), never hang.
#include <cstdio>

#include "farmem/far.hpp"

int main() {
  farmem::Config cfg = farmem::Config::from_env();
  cfg.local_mem_bytes = 8ull << 20;  // the minimum: 2048 frames
  farmem::init(cfg);
  farmem::FarArray<std::uint64_t> a((64ull << 20) / 8);
  farmem::Scope s;
  std::uint64_t sum = 0;
  for (std::size_t i = 0; i < a.size(); i += 512) sum += a.mut(s, i) += 1;  // each page stays pinned
  std::printf("pinned %llu pages with %llu frames: the runtime should have stopped us\n",
              static_cast<unsigned long long>(sum), static_cast<unsigned long long>(2048));
  return 0;
}
