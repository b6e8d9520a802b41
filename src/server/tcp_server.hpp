#pragma once
#include <cstdint>
#include <string>

namespace farmem::server {

struct TcpServerOptions {
  std::string host = "0.0.0.0";
  std::uint16_t port = 0;         // 0: pick a free port (printed at start)
  std::uint64_t capacity = 0;     // bytes of far memory for all clients together
  std::string token;              // empty: no token required
  unsigned stats_interval_s = 0;  // 0: usage line only on SIGUSR1 and at exit
};

// Serves far memory over TCP until SIGTERM/SIGINT. Returns the exit status.
int run_tcp(const TcpServerOptions& opt);

}  // namespace farmem::server
