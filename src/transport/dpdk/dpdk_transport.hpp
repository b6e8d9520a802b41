#pragma once
#include <memory>

#include "transport/queue_pair.hpp"

namespace farmem::net {
// A transport to farmem-server over DPDK (cfg.backend = dpdk://...); throws farmem::Error.
// Only in builds with DPDK (FARMEM_HAVE_DPDK).
std::unique_ptr<Transport> connect_dpdk(const Config& cfg);
// One server of a pool: survives its server (see MemberOptions).
std::unique_ptr<Transport> connect_dpdk_member(const Config& cfg, const MemberOptions& member);
}  // namespace farmem::net
