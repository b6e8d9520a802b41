// Small verbs and rdma_cm helpers the rdma:// client and server share: is
// there a device at all, can it page on demand (ODP), waiting for one
// connection-manager event with a timeout. Only built with rdma-core.
#pragma once
#include <infiniband/verbs.h>
#include <poll.h>
#include <rdma/rdma_cma.h>

#include <cerrno>
#include <string>

namespace farmem::net::rdma {

inline constexpr const char* kSoftRoceHint =
    "set up Soft-RoCE: rdma link add rxe0 type rxe netdev eth0";

// Empty if at least one verbs device exists; otherwise why not, for the error line.
inline std::string no_device_reason() {
  int n = 0;
  ibv_device** list = ibv_get_device_list(&n);
  if (list) ibv_free_device_list(list);
  if (list && n > 0) return {};
  return "no RDMA device found (ibv_get_device_list returned none)";
}

// True if the device can serve RDMA READ and WRITE on an RC queue pair from
// memory registered with IBV_ACCESS_ON_DEMAND (not pinned, faulted in as used).
inline bool odp_supported(ibv_context* ctx) {
  ibv_device_attr_ex attr{};
  if (ibv_query_device_ex(ctx, nullptr, &attr) != 0) return false;
  const std::uint32_t need = IBV_ODP_SUPPORT_READ | IBV_ODP_SUPPORT_WRITE;
  return (attr.odp_caps.general_caps & IBV_ODP_SUPPORT) &&
         (attr.odp_caps.per_transport_caps.rc_odp_caps & need) == need;
}

// Most RDMA READs the device lets one queue pair have in flight (and serve), at least 1.
inline int max_reads_in_flight(ibv_context* ctx, bool as_initiator) {
  ibv_device_attr attr{};
  if (ibv_query_device(ctx, &attr) != 0) return 1;
  int v = as_initiator ? attr.max_qp_init_rd_atom : attr.max_qp_rd_atom;
  return v < 1 ? 1 : (v > 255 ? 255 : v);
}

// Waits up to timeout_ms for the next event on `ch` (whose fd is non-blocking).
// Returns nullptr on timeout or error (errno says which); the caller acks the event.
inline rdma_cm_event* wait_cm_event(rdma_event_channel* ch, int timeout_ms) {
  pollfd p{ch->fd, POLLIN, 0};
  int r;
  do r = ::poll(&p, 1, timeout_ms); while (r < 0 && errno == EINTR);
  if (r == 0) errno = ETIMEDOUT;
  if (r <= 0) return nullptr;
  rdma_cm_event* ev = nullptr;
  if (rdma_get_cm_event(ch, &ev) != 0) return nullptr;
  return ev;
}

}  // namespace farmem::net::rdma
