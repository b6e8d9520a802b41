// The protection layer of the far tier (FARMEM_PROTECT=aead): a transport that
// wraps the one below it (shm, tcp, dpdk, file, redis, rdma; not a pool yet),
// so every page leaves the process encrypted and authenticated and is checked
// when it comes back. With FARMEM_COMPRESS too, the compressed tier seals its
// pieces itself (compress, then encrypt) and this layer is not used.
#pragma once
#include <memory>

#include "transport/queue_pair.hpp"

namespace farmem::tier {

// Wraps `inner` when cfg.protect is "aead" and cfg.compress is "none"; returns
// it as it is otherwise. Throws farmem::Error for a combination it refuses.
std::unique_ptr<net::Transport> protect_transport(const Config& cfg, std::unique_ptr<net::Transport> inner);

}  // namespace farmem::tier
