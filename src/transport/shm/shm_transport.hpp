// The embedded shm transport (shm_transport.cc).
#pragma once
#include <memory>

#include "transport/queue_pair.hpp"

namespace farmem::net {
// Spawns farmem-server and attaches to it; throws farmem::Error.
std::unique_ptr<Transport> connect_shm(const Config& cfg);
// Throws farmem::Error when no farmem-server binary can be found.
void check_shm(const Config& cfg);
}  // namespace farmem::net
