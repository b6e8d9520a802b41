#pragma once
#include <memory>

#include "transport/queue_pair.hpp"

namespace farmem::net {
// Far memory in an existing Redis at cfg.backend (redis://...); throws farmem::Error.
std::unique_ptr<Transport> connect_redis(const Config& cfg);
// The same as one server of a pool: a lost Redis fails its requests instead of ending the process.
std::unique_ptr<Transport> connect_redis_member(const Config& cfg, const MemberOptions& member);
}  // namespace farmem::net
