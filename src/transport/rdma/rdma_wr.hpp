// Work-request lists for the rdma:// transport: turns the reads and writes a
// queue pair collected since its last submit() into one chain of ibv_send_wr
// (linked through `next`, posted with a single ibv_post_send), with selective
// signaling decided by SendAccounting. Plain structs, no device: unit-tested.
#pragma once
#include <infiniband/verbs.h>

#include <cstddef>
#include <cstdint>

#include "transport/rdma/rdma_logic.hpp"

namespace farmem::net::rdma {

// One page transfer a queue pair was asked for.
struct Transfer {
  bool write;               // RDMA WRITE (local -> remote) or READ (remote -> local)
  std::uint64_t local;      // local address, inside a registered region
  std::uint32_t len;
  std::uint32_t lkey;       // that region's local key
  std::uint64_t remote_off; // offset in the session's remote region
  std::uint64_t cookie;     // returned by poll() when the transfer is complete
};

// Fills wrs[0..n) and sges[0..n) for transfers[0..n) as one chained list and
// returns its head. The last one is signaled (so the list completes); others
// every acct's signal interval. Needs n <= acct.room() and n > 0.
inline ibv_send_wr* build_send_list(const Transfer* transfers, std::size_t n, SendAccounting& acct,
                                    std::uint64_t remote_base, std::uint32_t rkey, ibv_send_wr* wrs,
                                    ibv_sge* sges) {
  for (std::size_t i = 0; i < n; ++i) {
    const Transfer& t = transfers[i];
    SendAccounting::Planned p = acct.plan(t.cookie, i + 1 == n);
    sges[i] = ibv_sge{t.local, t.len, t.lkey};
    ibv_send_wr& w = wrs[i];
    w = ibv_send_wr{};
    w.wr_id = p.wr_id;
    w.next = i + 1 < n ? &wrs[i + 1] : nullptr;
    w.sg_list = &sges[i];
    w.num_sge = 1;
    w.opcode = t.write ? IBV_WR_RDMA_WRITE : IBV_WR_RDMA_READ;
    w.send_flags = p.signaled ? IBV_SEND_SIGNALED : 0;
    w.wr.rdma.remote_addr = remote_base + t.remote_off;
    w.wr.rdma.rkey = rkey;
  }
  return n ? &wrs[0] : nullptr;
}

}  // namespace farmem::net::rdma
