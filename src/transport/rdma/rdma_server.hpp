// Options and entry point of the RDMA memory server (rdma_server.cc).
#pragma once
#include <cstdint>
#include <string>

#include "server/listener.hpp"

namespace farmem::server {

struct RdmaServerOptions {
  std::string host = "0.0.0.0";  // an address on an RDMA interface (or the wildcard)
  std::uint16_t port = 0;        // 0: pick a free port (printed at start)
};

// Serves far memory over RDMA (rdma_server.cc, built with rdma-core) until
// ctx.control asks it to stop. Returns the exit status; prints one line and
// returns 1 when there is no RDMA device or the address cannot be bound.
int run_rdma(const RdmaServerOptions& opt, ListenerContext& ctx);

}  // namespace farmem::server
