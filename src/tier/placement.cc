// Rendezvous hashing (Thaler and Ravishankar): each (group, server) pair gets a
// pseudo-random weight and a group's pieces go to its heaviest servers. The
// weight is splitmix64 of the pair; ranking 15 servers is a few dozen ns.
#include "tier/placement.hpp"

#include <algorithm>

namespace farmem::tier {
namespace {
std::uint64_t mix(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}
}  // namespace

unsigned rank_servers(std::uint64_t page, unsigned n_servers, std::uint32_t usable, unsigned* order) {
  std::uint64_t weight[kMaxServers];
  unsigned n = 0;
  const std::uint64_t group = page / kGroupPages;
  for (unsigned s = 0; s < n_servers && s < kMaxServers; ++s) {
    if (!(usable & (1u << s))) continue;
    weight[s] = mix(group * 0x100000001b3ull + s);
    order[n++] = s;
  }
  std::sort(order, order + n, [&](unsigned a, unsigned b) { return weight[a] > weight[b]; });
  return n;
}

}  // namespace farmem::tier
