// A far-memory pool: one transport over several memory servers, with each
// page's pieces placed by tier/placement and made redundant by tier/redundancy.
// The memory manager above sees one transport; the servers below are members,
// each its own transport that reports its loss instead of ending the process.
#pragma once
#include <memory>

#include "transport/queue_pair.hpp"

namespace farmem::tier {

// True if `backend` names a pool: several URIs separated by commas, or @FILE.
bool names_pool(const std::string& backend);
// True if cfg.backend names a pool or cfg asks for redundancy.
bool is_pool(const Config& cfg);
// Connects to every server of the pool; throws farmem::Error naming the problem.
std::unique_ptr<net::Transport> connect_pool(const Config& cfg);

}  // namespace farmem::tier
