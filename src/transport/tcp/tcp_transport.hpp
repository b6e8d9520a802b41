#pragma once
#include <memory>

#include "transport/queue_pair.hpp"

namespace farmem::net {
// A transport to farmem-server at cfg.backend (tcp://HOST:PORT); throws farmem::Error.
std::unique_ptr<Transport> connect_tcp(const Config& cfg);
// The same as one server of a pool: it reports its server's loss instead of ending the process.
std::unique_ptr<Transport> connect_tcp_member(const Config& cfg, const MemberOptions& member);
}  // namespace farmem::net
