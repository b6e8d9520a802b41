// Where a page's pieces go: rendezvous (highest-random-weight) hashing of the
// page's group against each server. Computed, never stored: each server's
// share is even, and when a server leaves only the pieces it held move.
#pragma once
#include <cstdint>

namespace farmem::tier {

constexpr unsigned kMaxServers = 15;      // a four-bit server number per piece, 0 = none
constexpr std::uint64_t kGroupPages = 16;  // pages that share a ranking: a 64 KiB run goes to the same servers

// Writes the servers usable for `page` (bit i of `usable` set: server i can take
// pieces), best first, into order; returns how many (at most n_servers).
unsigned rank_servers(std::uint64_t page, unsigned n_servers, std::uint32_t usable, unsigned* order);

}  // namespace farmem::tier
