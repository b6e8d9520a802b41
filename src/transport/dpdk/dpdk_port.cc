// DPDK device layer: EAL start-up once per process, mbuf pools, memif or
// ethdev ports with one queue pair per lane, frame building, the loss knob.
#include "transport/dpdk/dpdk_port.hpp"

#include <pthread.h>
#include <sched.h>
#include <unistd.h>

#include <rte_dev.h>
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_ethdev.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <sstream>
#include <vector>

#include "farmem/runtime.hpp"

namespace farmem::net::dpdk {

namespace {
std::mutex g_eal_mu;
bool g_eal_up = false;
std::string g_eal_who;
}  // namespace

void eal_init_once(const Uri& u, const char* who) {
  std::lock_guard<std::mutex> g(g_eal_mu);
  if (g_eal_up) return;
  std::vector<std::string> args = {who, "-l", "0", "--no-telemetry", "--log-level=error",
                                   "--log-level=pmd.net.memif:critical",  // we report its failures ourselves
                                   "--file-prefix", std::string("farmem-") + std::to_string(getpid())};
  if (u.memif) {
    for (const char* a : {"--no-huge", "--no-pci", "--no-shconf", "-m", "256"}) args.emplace_back(a);
  }
  drop_received();  // validates FARMEM_DPDK_DROP_PPM now, not in the packet loop
  std::string extra;
  if (const char* e = std::getenv("FARMEM_DPDK_EAL_ARGS")) {
    extra = e;
    std::istringstream ss(extra);
    for (std::string w; ss >> w;) args.push_back(w);
  }
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  // EAL pins the calling thread to lcore 0; the application's thread must keep
  // the CPUs it had, so save and restore its affinity.
  cpu_set_t saved;
  bool have_aff = pthread_getaffinity_np(pthread_self(), sizeof saved, &saved) == 0;
  optind = 1;  // EAL parses with getopt
  int rc = rte_eal_init(static_cast<int>(args.size()), argv.data());
  optind = 1;
  if (have_aff) pthread_setaffinity_np(pthread_self(), sizeof saved, &saved);
  if (rc < 0) {
    std::string all;
    for (std::size_t i = 1; i < args.size(); ++i) all += (i > 1 ? " " : "") + args[i];
    throw Error(std::string(who) + ": cannot start the DPDK EAL (" + rte_strerror(rte_errno) + ") with '" + all +
                "'; fix FARMEM_DPDK_EAL_ARGS or use another backend");
  }
  g_eal_up = true;
  g_eal_who = who;
}

rte_mempool* make_pool(const std::string& name, unsigned count) {
  const unsigned room = RTE_PKTMBUF_HEADROOM + static_cast<unsigned>(kFrameMax) + 64;
  rte_mempool* p = rte_pktmbuf_pool_create(name.c_str(), count, 0, 0, static_cast<std::uint16_t>(room), SOCKET_ID_ANY);
  if (!p)
    throw Error("cannot create the DPDK mbuf pool " + name + " (" + rte_strerror(rte_errno) +
                "); give EAL more memory (FARMEM_DPDK_EAL_ARGS=\"-m 512\")");
  return p;
}

Device open_device(const Uri& u, bool server, unsigned memif_id, rte_mempool* pool, const std::string& tag) {
  Device d;
  d.queues = u.queues;
  if (u.memif) {
    d.name = std::string("net_memif_") + (server ? "s" : "c" + tag + "_") + std::to_string(memif_id);
    std::string args = std::string("role=") + (server ? "server" : "client") + ",socket=" + u.socket +
                       ",id=" + std::to_string(memif_id) + ",bsize=" + std::to_string(kMemifBsize) +
                       ",rsize=8,socket-abstract=" + (u.abstract ? "yes" : "no");
    if (rte_dev_probe(("vdev:" + d.name + "," + args).c_str()) != 0)
      throw Error("cannot create the memif device " + d.name + " (" + args + ")" +
                  (server ? "; is another farmem-server on that socket? pick another path" : ""));
    if (rte_eth_dev_get_port_by_name(d.name.c_str(), &d.port) != 0)
      throw Error("the memif device " + d.name + " has no ethdev port");
  } else {
    if (!rte_eth_dev_is_valid_port(static_cast<std::uint16_t>(u.port)))
      throw Error(u.text + ": DPDK has no port " + std::to_string(u.port) + " (" +
                  std::to_string(rte_eth_dev_count_avail()) +
                  " ports probed); name the device in FARMEM_DPDK_EAL_ARGS, e.g. -a 0000:3b:00.0");
    d.port = static_cast<std::uint16_t>(u.port);
    char name[RTE_ETH_NAME_MAX_LEN];
    rte_eth_dev_get_name_by_port(d.port, name);
    d.name = name;
  }
  rte_eth_dev_info info{};
  if (rte_eth_dev_info_get(d.port, &info) != 0) throw Error("cannot query the DPDK device " + d.name);
  if (info.max_rx_queues < u.queues || info.max_tx_queues < u.queues)
    throw Error("the DPDK device " + d.name + " has at most " + std::to_string(info.max_rx_queues) +
                " queues; lower queues= in the URI");
  rte_eth_conf conf{};
  if (!u.memif && info.max_rx_pktlen >= kFrameMax) conf.rxmode.mtu = static_cast<std::uint32_t>(kFrameMax - kEthHeader);
  int rc = rte_eth_dev_configure(d.port, static_cast<std::uint16_t>(u.queues), static_cast<std::uint16_t>(u.queues), &conf);
  if (rc != 0) throw Error("cannot configure the DPDK device " + d.name + ": " + rte_strerror(-rc));
  for (unsigned q = 0; q < u.queues; ++q) {
    rc = rte_eth_rx_queue_setup(d.port, static_cast<std::uint16_t>(q), kRingSize, SOCKET_ID_ANY, nullptr, pool);
    if (rc == 0) rc = rte_eth_tx_queue_setup(d.port, static_cast<std::uint16_t>(q), kRingSize, SOCKET_ID_ANY, nullptr);
    if (rc != 0) throw Error("cannot set up queue " + std::to_string(q) + " of " + d.name + ": " + rte_strerror(-rc));
  }
  rc = rte_eth_dev_start(d.port);
  if (rc != 0 && u.memif && !server)  // the memif client connects to the socket when it starts
    throw Error("no farmem-server answered on memif socket " + u.socket +
                "; start farmem-server --listen dpdk://memif" + u.socket + " or fix FARMEM_BACKEND");
  if (rc != 0) throw Error("cannot start the DPDK device " + d.name + ": " + rte_strerror(-rc));
  if (!u.memif) rte_eth_promiscuous_enable(d.port);
  rte_ether_addr mac{};
  rte_eth_macaddr_get(d.port, &mac);
  std::memcpy(d.mac, mac.addr_bytes, 6);
  return d;
}

bool link_up(std::uint16_t port) {
  rte_eth_link link{};
  if (rte_eth_link_get_nowait(port, &link) != 0) return false;
  return link.link_status == RTE_ETH_LINK_UP;
}

rte_mbuf* build_frame(rte_mempool* pool, const std::uint8_t dst[6], const std::uint8_t src[6], const Header& h,
                      const void* payload) {
  rte_mbuf* m = rte_pktmbuf_alloc(pool);
  if (!m) return nullptr;
  const std::size_t len = kEthHeader + sizeof h + h.length;
  char* p = rte_pktmbuf_append(m, static_cast<std::uint16_t>(len < 60 ? 60 : len));
  if (!p) {
    rte_pktmbuf_free(m);
    return nullptr;
  }
  encode(p, len, dst, src, h, payload);
  return m;
}

const void* frame_bytes(rte_mbuf* m, void* scratch, std::size_t* len) {
  *len = rte_pktmbuf_pkt_len(m);
  if (*len > kFrameMax + 64) *len = kFrameMax + 64;  // longer is malformed; decode rejects it by content
  if (*len > kFrameMax) *len = kFrameMax;
  return rte_pktmbuf_read(m, 0, static_cast<std::uint32_t>(*len), scratch);
}

void frame_source(rte_mbuf* m, std::uint8_t out[6]) {
  std::uint8_t tmp[12];
  const auto* p = static_cast<const std::uint8_t*>(rte_pktmbuf_read(m, 0, 12, tmp));
  if (p) std::memcpy(out, p + 6, 6);
}

bool drop_received() {
  static const std::uint32_t ppm = [] {
    const char* v = std::getenv("FARMEM_DPDK_DROP_PPM");
    if (!v || !*v) return 0u;
    char* end = nullptr;
    unsigned long n = std::strtoul(v, &end, 10);
    if (*end || n > 1000000) throw Error(std::string("FARMEM_DPDK_DROP_PPM=") + v + " must be 0-1000000 (parts per million)");
    return static_cast<std::uint32_t>(n);
  }();
  if (ppm == 0) return false;
  thread_local std::uint64_t x = 0x9E3779B97F4A7C15ull ^ reinterpret_cast<std::uintptr_t>(&x) ^ static_cast<std::uint64_t>(getpid());
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  return x % 1000000 < ppm;
}

}  // namespace farmem::net::dpdk
