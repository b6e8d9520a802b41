// The README's first example, as a user would write it: an 8 GiB far array on
// the default configuration (test/cli/run_test.sh times its start-up).
#include <cstdint>
#include <cstdio>

#include <farmem/far.hpp>

int main() {
  farmem::FarArray<std::uint64_t> table(1ull << 30);  // 8 GiB, in far memory
  std::uint64_t v;
  {
    farmem::Scope s;
    table.mut(s, 42) += 1;
    v = table.get(s, 7) + table.get(s, 42);
  }
  std::printf("readme_example: %llu\n", static_cast<unsigned long long>(v));
  return 0;
}
