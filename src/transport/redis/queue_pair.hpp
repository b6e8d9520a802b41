#pragma once
#include <memory>

#include "transport/queue_pair.hpp"
#include "transport/redis/shared.hpp"

namespace farmem::net::redis {
// A core's queue pair: a non-blocking pipelined connection to each node it uses.
std::unique_ptr<QueuePair> make_queue_pair(Shared& s);
}  // namespace farmem::net::redis
