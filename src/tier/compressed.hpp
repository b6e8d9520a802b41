// The compression layer of the far tier (FARMEM_COMPRESS): a transport that
// wraps the one below it (shm, tcp, dpdk, file, redis, or each server of a
// pool), so pages are compressed on their way out and decompressed on their way in.
#pragma once
#include <memory>
#include <string>

#include "transport/queue_pair.hpp"

namespace farmem::tier {

// Empty when cfg.compress can be used with cfg.backend; else why not, and the
// fix. Throws farmem::Error naming a codec that does not exist.
std::string compress_refusal(const Config& cfg);
// Wraps `inner` when cfg.compress asks for a codec; returns it as it is for
// "none" and for a pool (tier/pool.cc compresses each server's pieces instead).
std::unique_ptr<net::Transport> compress_transport(const Config& cfg, std::unique_ptr<net::Transport> inner);
// One server of a pool, `uri`, whose pages are the pool's pieces of
// piece_bytes: compressed one piece at a time, kept when read back (the pool's
// redundancy needs them), and a damaged one handed up as zeros so that the
// pool's checksum rebuilds the page from the others.
std::unique_ptr<net::Transport> compress_member(const Config& cfg, const std::string& uri,
                                                std::unique_ptr<net::Transport> member, std::size_t piece_bytes);

}  // namespace farmem::tier
