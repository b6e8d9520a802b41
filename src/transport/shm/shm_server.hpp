#pragma once
#include <cstdint>

namespace farmem::server {
// Serves `capacity` bytes of far memory to the client on the other end of `fd`.
int run_shm(int fd, std::uint64_t capacity);
}  // namespace farmem::server
