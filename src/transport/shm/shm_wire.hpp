// Control messages between the runtime and its embedded (shm) memory server,
// over a SOCK_SEQPACKET socketpair. Page data never crosses this socket: the
// client moves pages with process_vm_readv/writev, one-sided, like RDMA READ/WRITE.
#pragma once
#include <cstdint>

namespace farmem::net::shm {

inline constexpr std::uint32_t kMagic = 0x46524d53;  // "FRMS"
inline constexpr std::uint32_t kVersion = 1;

struct Hello {          // server -> client, once, when its memory is mapped
  std::uint32_t magic;
  std::uint32_t version;
  std::uint64_t pid;
  std::uint64_t base;      // address of the far region in the server
  std::uint64_t capacity;  // bytes
};

// Fork: the server forks a copy of itself (a copy-on-write snapshot of far
// memory) for a child of the client, and answers with the copy's pid and,
// as SCM_RIGHTS, the control socket of the copy.
enum class Op : std::uint32_t { Discard = 1, Usage = 2, Bye = 3, Fork = 4 };

struct Request {        // client -> server
  Op op;
  std::uint32_t pad;
  std::uint64_t off;
  std::uint64_t len;
};

struct Reply {          // server -> client (Usage: bytes; Fork: pid, 0 on failure)
  std::uint64_t value;
};

}  // namespace farmem::net::shm
