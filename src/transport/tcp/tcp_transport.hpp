#pragma once
#include <memory>

#include "net/queue_pair.hpp"

namespace farmem::net {
// A transport to farmem-server at cfg.backend (tcp://HOST:PORT); throws farmem::Error.
std::unique_ptr<Transport> connect_tcp(const Config& cfg);
}  // namespace farmem::net
