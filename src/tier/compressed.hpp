// The compression layer of the far tier (FARMEM_COMPRESS): a transport that
// wraps the one below it (shm, tcp, dpdk, file, redis; not a pool yet), so
// pages are compressed on their way out and decompressed on their way in.
#pragma once
#include <memory>
#include <string>

#include "transport/queue_pair.hpp"

namespace farmem::tier {

// Empty when cfg.compress can be used with cfg.backend; else why not, and the fix.
std::string compress_refusal(const Config& cfg);
// Wraps `inner` when cfg.compress asks for a codec; returns it as it is for
// "none". Throws farmem::Error for a codec that cannot be used with it.
std::unique_ptr<net::Transport> compress_transport(const Config& cfg, std::unique_ptr<net::Transport> inner);

}  // namespace farmem::tier
