// Options and entry point of the RDMA memory server (rdma_server.cc).
#pragma once
#include <cstdint>
#include <string>

namespace farmem::server {

struct RdmaServerOptions {
  std::string host = "0.0.0.0";   // an address on an RDMA interface (or the wildcard)
  std::uint16_t port = 0;         // 0: pick a free port (printed at start)
  std::uint64_t capacity = 0;     // bytes of far memory for all clients together
  std::string token;              // empty: no token required
  unsigned stats_interval_s = 0;  // 0: usage line only on SIGUSR1 and at exit
};

// Serves far memory over RDMA (rdma_server.cc, built with rdma-core) until
// SIGTERM/SIGINT. Returns the exit status; prints one line and returns 1 when
// there is no RDMA device or the address cannot be bound.
int run_rdma(const RdmaServerOptions& opt);

}  // namespace farmem::server
