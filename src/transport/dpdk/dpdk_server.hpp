#pragma once
#include <string>

#include "server/listener.hpp"

namespace farmem::server {

struct DpdkServerOptions {
  std::string uri;  // dpdk://memif/PATH?clients=N&queues=Q or dpdk://port/N?queues=Q (already validated)
};

// Serves far memory over DPDK until ctx.control asks it to stop. Returns the
// exit status: 1 (after one line on stderr) when EAL or the device cannot
// start. Only in builds with DPDK (FARMEM_HAVE_DPDK).
int run_dpdk(const DpdkServerOptions& opt, ListenerContext& ctx);

}  // namespace farmem::server
