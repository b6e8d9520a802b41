#pragma once
#include <cstdint>

namespace farmem::server {
// Serves `capacity` bytes of far memory to the client on the other end of `fd`.
// huge_pages: back it with transparent huge pages (fewer page walks for the
// client's copies); off for the compressed tier, whose pieces are packed and
// given back a few pages at a time: khugepaged would fill the holes back in.
int run_shm(int fd, std::uint64_t capacity, bool huge_pages);
}  // namespace farmem::server
