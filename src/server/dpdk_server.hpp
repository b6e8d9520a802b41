#pragma once
#include <cstdint>
#include <string>

namespace farmem::server {

struct DpdkServerOptions {
  std::string uri;                // dpdk://memif/PATH?clients=N&queues=Q or dpdk://port/N?queues=Q
  std::uint64_t capacity = 0;     // bytes of far memory for all clients together
  std::string token;              // empty: no token required
  unsigned stats_interval_s = 0;  // 0: usage line only on SIGUSR1 and at exit
};

// Serves far memory over DPDK until SIGTERM/SIGINT. Returns the exit status.
// Only in builds with DPDK (FARMEM_HAVE_DPDK).
int run_dpdk(const DpdkServerOptions& opt);

}  // namespace farmem::server
