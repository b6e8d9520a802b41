#pragma once
#include <memory>

#include "transport/queue_pair.hpp"

namespace farmem::net {
// Far memory in an existing Redis at cfg.backend (redis://...); throws farmem::Error.
std::unique_ptr<Transport> connect_redis(const Config& cfg);
}  // namespace farmem::net
