// The protection layer of the far tier (FARMEM_PROTECT=aead): a transport that
// wraps the one below it (shm, tcp, dpdk, file, redis, rdma, or each server of
// a pool), so every page leaves the process encrypted and authenticated and is
// checked when it comes back. With FARMEM_COMPRESS too, the compressed tier
// seals its pieces itself (compress, then encrypt) and this layer is not used.
#pragma once
#include <memory>

#include "transport/queue_pair.hpp"

namespace farmem::tier {

// Wraps `inner` when cfg.protect is "aead" and cfg.compress is "none"; returns
// it as it is otherwise, and for a pool (tier/pool.cc protects each server).
std::unique_ptr<net::Transport> protect_transport(const Config& cfg, std::unique_ptr<net::Transport> inner);
// One server of a pool, whose pages are the pool's pieces of piece_bytes:
// each piece sealed with this server's own key (no nonce is shared between
// servers), and one that fails its check handed up as zeros and counted, so
// that the pool's checksum rebuilds the page from the other servers' pieces.
std::unique_ptr<net::Transport> protect_member(const Config& cfg, std::unique_ptr<net::Transport> member,
                                               std::size_t piece_bytes);

}  // namespace farmem::tier
