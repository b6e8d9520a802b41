// The rdma:// transport entry point (rdma_transport.cc, built with rdma-core).
#pragma once
#include <memory>

#include "transport/queue_pair.hpp"

namespace farmem::net {
// A transport to farmem-server --listen rdma://HOST:PORT; throws farmem::Error.
std::unique_ptr<Transport> connect_rdma(const Config& cfg);
}  // namespace farmem::net
