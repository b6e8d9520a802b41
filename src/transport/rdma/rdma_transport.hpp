// The rdma:// transport entry point (rdma_transport.cc, built with rdma-core).
#pragma once
#include <memory>

#include "transport/queue_pair.hpp"

namespace farmem::net {
// A transport to farmem-server --listen rdma://HOST:PORT; throws farmem::Error.
std::unique_ptr<Transport> connect_rdma(const Config& cfg);
// One server of a pool: requests fail instead of ending the process, and
// transfers are staged through registered buffers of its own.
std::unique_ptr<Transport> connect_rdma_member(const Config& cfg, const MemberOptions& member);
}  // namespace farmem::net
