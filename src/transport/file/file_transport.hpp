// The file:// transport: far memory in a file or block device (an SSD tier).
#pragma once
#include <memory>

#include "transport/queue_pair.hpp"

namespace farmem::net {
// Far memory at cfg.backend (file:///PATH: a new sparse file, a file made in a
// directory, or a block device); throws farmem::Error naming the problem and the fix.
std::unique_ptr<Transport> connect_file(const Config& cfg);
// The same as one server of a pool: an I/O error fails the request instead of
// ending the process.
std::unique_ptr<Transport> connect_file_member(const Config& cfg, const MemberOptions& member);
}  // namespace farmem::net
