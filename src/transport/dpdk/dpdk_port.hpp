// The DPDK device layer shared by the dpdk:// client and farmem-server: EAL
// start-up (once per process), the mbuf pool, opening a net_memif virtual
// device or an ethdev port with one rx/tx queue pair per lane, building and
// reading frames, and the test-only packet-loss knob (FARMEM_DPDK_DROP_PPM).
// Only built when DPDK is found.
#pragma once
#include <cstdint>
#include <string>

#include "transport/dpdk/dpdk_proto.hpp"

struct rte_mbuf;
struct rte_mempool;

namespace farmem::net::dpdk {

inline constexpr unsigned kRingSize = 256;     // descriptors per queue (memif rsize=8)
inline constexpr unsigned kMemifBsize = 4352;  // memif buffer: one frame of 14 + 64 + 4096 bytes
inline constexpr unsigned kWindow = 128;       // requests in flight per lane (seq window), half a ring:
                                               // replies to all of them fit the peer's rx ring

// Starts the DPDK EAL for this process unless it already runs. `who` names the
// program in messages. Adds FARMEM_DPDK_EAL_ARGS (split on spaces) after the
// defaults (memif: --no-huge --no-pci --no-shconf -m 256; always: -l 0,
// --no-telemetry, --log-level=error, a per-process --file-prefix). The calling
// thread's CPU affinity is restored afterwards. Throws farmem::Error.
void eal_init_once(const Uri& u, const char* who);

// A pool of mbufs big enough for one whole frame each, cache size 0 so any
// thread (EAL or not) may allocate and free.
rte_mempool* make_pool(const std::string& name, unsigned count);

struct Device {
  std::uint16_t port = 0;
  unsigned queues = 0;
  std::uint8_t mac[6] = {};
  std::string name;
};

// Creates (memif) or takes (port/N) the device, configures `u.queues` rx and tx
// queues from `pool` and starts it. memif_id is the interface id (client:
// u.id; server: one device per id); tag tells apart a client's devices (one
// per server of a pool). Throws farmem::Error.
Device open_device(const Uri& u, bool server, unsigned memif_id, rte_mempool* pool, const std::string& tag = "");
bool link_up(std::uint16_t port);

// Allocates an mbuf holding the frame (dst, src, h, payload); nullptr if the pool is empty.
rte_mbuf* build_frame(rte_mempool* pool, const std::uint8_t dst[6], const std::uint8_t src[6], const Header& h,
                      const void* payload);
// Points at the frame's bytes (copied into scratch, kFrameMax bytes, if the mbuf is chained).
const void* frame_bytes(rte_mbuf* m, void* scratch, std::size_t* len);
// The source MAC of a received frame.
void frame_source(rte_mbuf* m, std::uint8_t out[6]);

// Test knob: true for a received packet that FARMEM_DPDK_DROP_PPM says to drop.
bool drop_received();

}  // namespace farmem::net::dpdk
