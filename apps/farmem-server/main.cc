// farmem-server: the memory node. Serves far memory to clients over tcp://,
// tcp+tls://, rdma:// and dpdk:// (one or more --listen, each on a thread of its own, one
// --capacity shared by all), or runs as the embedded shm server a runtime
// starts for itself (--shm-fd, internal).
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "farmem/runtime.hpp"
#include "farmem_build_config.h"
#include "transport/dpdk/dpdk_proto.hpp"
#include "transport/rdma/rdma_logic.hpp"
#include "transport/wire.hpp"
#include "server/capacity.hpp"
#include "server/listener.hpp"
#include "transport/shm/shm_server.hpp"
#include "transport/tcp/tcp_server.hpp"
#if FARMEM_HAVE_RDMA
#include "transport/rdma/rdma_server.hpp"
#endif
#if FARMEM_HAVE_DPDK
#include "transport/dpdk/dpdk_server.hpp"
#endif

namespace {
void usage(FILE* out) {
  std::fprintf(out,
               "usage: farmem-server --listen URI [--listen URI ...] --capacity SIZE [--token-file FILE]\n"
               "                     [--tls-cert FILE --tls-key FILE] [--stats-interval SECONDS]\n"
               "  Serves SIZE bytes of far memory (e.g. 16G) to farmem clients; each client gets\n"
               "  its own memory, reclaimed when it disconnects. PORT 0 picks a free port (printed).\n"
               "  Several --listen (different URIs, at most one dpdk://) serve from one process, each\n"
               "  on a thread of its own, all from the one SIZE; if any cannot start, none serves.\n"
               "  URI is one of:\n"
               "    tcp://HOST:PORT   plain TCP, works anywhere (FARMEM_BACKEND=tcp://...)\n"
               "    tcp+tls://HOST:PORT  TCP under TLS 1.3 (OpenSSL): needs --tls-cert and --tls-key (PEM);\n"
               "                      clients check the certificate against FARMEM_TLS_CA (FARMEM_BACKEND=\n"
               "                      tcp+tls://...). See docs/tls.md.\n"
               "    rdma://HOST:PORT  RDMA with rdma-core: clients READ and WRITE the server's registered\n"
               "                      memory (FARMEM_BACKEND=rdma://...). HOST is an address on an RDMA\n"
               "                      interface or 0.0.0.0; needs an RDMA device (or Soft-RoCE:\n"
               "                      rdma link add rxe0 type rxe netdev eth0). See docs/rdma.md.%s\n"
               "    dpdk://memif/PATH[?clients=N&queues=Q]\n"
               "                      DPDK net_memif on the control socket PATH: interface ids\n"
               "                      0..N-1 (default 4), one client each (FARMEM_BACKEND=\n"
               "                      dpdk://memif/PATH?id=I); Q queue pairs each (default 8).\n"
               "    dpdk://port/N[?queues=Q]  DPDK ethdev port N (name the NIC in FARMEM_DPDK_EAL_ARGS,\n"
               "                      e.g. \"-a 0000:3b:00.0\"); clients use ?peer=<printed MAC>.\n"
               "  dpdk:// runs EAL with --no-huge --no-pci for memif; FARMEM_DPDK_EAL_ARGS adds arguments.\n"
               "  dpdk clients that send nothing for 10 s (or whose memif link drops) are dropped.\n"
               "  With --token-file, clients must present the same token (FARMEM_TOKEN_FILE).\n"
               "  SIGUSR1 (and every --stats-interval seconds) prints a JSON usage line per listener\n"
               "  (with several, each names its \"listener\" and one more line sums up the server:\n"
               "  \"listeners\", \"clients\", \"reserved_bytes\", \"capacity_bytes\"); SIGTERM stops it.\n"
               "  Live usage for farmem-stat is published in FARMEM_STATS_DIR (default /dev/shm/farmem, off:\n"
               "  none); FARMEM_METRICS=HOST:PORT serves it as Prometheus text at GET /metrics.\n"
               "       farmem-server --shm-fd FD --capacity BYTES [--small-pages]   (internal: the embedded server)\n",
               FARMEM_HAVE_RDMA ? "" : "\n                      (not in this build: it was built without rdma-core)");
}
[[noreturn]] void die(const std::string& msg) {
  std::fprintf(stderr, "farmem-server: %s\n", msg.c_str());
  std::exit(2);
}

namespace server = farmem::server;

// Checks one --listen URI (dies with one line naming it, exit 2) and returns
// the listener that serves it. Starts nothing.
server::Listener make_listener(const std::string& listen, bool* have_dpdk,
                               const std::shared_ptr<farmem::net::tcp::TlsContext>& tls) {
  if (listen.rfind("rdma://", 0) == 0) {
    farmem::net::rdma::Endpoint ep;
    try {
      ep = farmem::net::rdma::parse_uri(listen, true, "--listen");
    } catch (const farmem::Error& e) {
      die(e.what());
    }
#if FARMEM_HAVE_RDMA
    server::RdmaServerOptions ro;
    ro.host = ep.host;
    ro.port = ep.port;
    return {listen, [ro](server::ListenerContext& ctx) { return server::run_rdma(ro, ctx); }};
#else
    die("--listen " + listen + ": this farmem-server was built without rdma-core; install libibverbs-dev and "
        "librdmacm-dev and rebuild (meson setup -Drdma=enabled), or use tcp://HOST:PORT");
#endif
  }
  if (listen.rfind("dpdk://", 0) == 0) {
#if FARMEM_HAVE_DPDK
    try {
      farmem::net::dpdk::parse_uri(listen, true);
    } catch (const farmem::Error& e) {
      die(e.what());
    }
    // One EAL per process, started with one URI's arguments; a memif listener serves clients=N ids.
    if (*have_dpdk) die("--listen " + listen + ": one dpdk:// listener per farmem-server (memif: raise clients=N)");
    *have_dpdk = true;
    server::DpdkServerOptions dopt;
    dopt.uri = listen;
    return {listen, [dopt](server::ListenerContext& ctx) { return server::run_dpdk(dopt, ctx); }};
#else
    (void)have_dpdk;
    die("--listen " + listen + ": this farmem-server was built without DPDK (libdpdk-dev missing at configure "
        "time); install it and rebuild with -Ddpdk=enabled");
#endif
  }
  const bool is_tls = listen.rfind("tcp+tls://", 0) == 0;
  if (listen.rfind("tcp://", 0) != 0 && !is_tls)
    die("--listen " + listen + " is not tcp://HOST:PORT, tcp+tls://HOST:PORT, rdma://HOST:PORT or dpdk://...");
  server::TcpServerOptions opt;
  if (is_tls) opt.tls = tls;
  std::string rest = listen.substr(is_tls ? 10 : 6);
  std::size_t colon = rest.rfind(':');
  if (colon == std::string::npos) die("--listen " + listen + " is not " + (is_tls ? "tcp+tls" : "tcp") + "://HOST:PORT");
  opt.host = rest.substr(0, colon);
  if (opt.host.size() > 1 && opt.host.front() == '[') opt.host = opt.host.substr(1, opt.host.size() - 2);
  char* end = nullptr;
  long port = std::strtol(rest.c_str() + colon + 1, &end, 10);
  if (*end || port < 0 || port > 65535 || colon + 1 == rest.size())
    die("--listen " + listen + ": port must be 0-65535");
  opt.port = static_cast<std::uint16_t>(port);
  return {listen, [opt](server::ListenerContext& ctx) { return server::run_tcp(opt, ctx); }};
}
}  // namespace

int main(int argc, char** argv) {
  int shm_fd = -1;
  std::uint64_t capacity = 0;
  std::vector<std::string> listens;
  std::string token_file, tls_cert, tls_key;
  unsigned stats_interval = 0;
  bool huge_pages = true;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") { usage(stdout); return 0; }
    if (a == "--small-pages") {  // internal, with --shm-fd: see run_shm
      huge_pages = false;
      continue;
    }
    if (i + 1 >= argc) die(a + " needs a value; see --help");
    std::string v = argv[++i];
    try {
      if (a == "--shm-fd") shm_fd = std::stoi(v);
      else if (a == "--capacity") capacity = farmem::parse_size(v, "--capacity");
      else if (a == "--listen") listens.push_back(v);
      else if (a == "--token-file") token_file = v;
      else if (a == "--tls-cert") tls_cert = v;
      else if (a == "--tls-key") tls_key = v;
      else if (a == "--stats-interval") stats_interval = static_cast<unsigned>(std::stoul(v));
      else die("unknown option " + a + "; see --help");
    } catch (const farmem::Error& e) {
      die(e.what());
    } catch (const std::exception&) {
      die("bad number for " + a + ": " + v);
    }
  }
  if (shm_fd >= 0) {
    if (capacity == 0) die("--shm-fd needs --capacity");
    return server::run_shm(shm_fd, capacity, huge_pages);
  }
  if (listens.empty()) die("--listen tcp://HOST:PORT is required (or rdma://HOST:PORT or dpdk://...); see --help");
  if (capacity == 0) die("--capacity SIZE is required (e.g. --capacity 16G)");
  std::string token;
  if (!token_file.empty()) {
    if (!farmem::net::wire::read_token_file(token_file, &token))
      die("cannot read --token-file " + token_file + ": " + std::strerror(errno));
    if (token.empty()) die("--token-file " + token_file + " is empty");
    if (token.size() > farmem::net::wire::kMaxToken) die("--token-file " + token_file + " holds more than 4096 bytes");
  }
  // Every --listen is checked before any starts.
  for (std::size_t i = 0; i < listens.size(); ++i)
    for (std::size_t j = 0; j < i; ++j)
      if (listens[i] == listens[j]) die("--listen " + listens[i] + " given twice");
  // tcp+tls:// listeners share one certificate, loaded (and checked) before anything starts.
  std::shared_ptr<farmem::net::tcp::TlsContext> tls;
  bool want_tls = false;
  for (const std::string& l : listens) want_tls |= l.rfind("tcp+tls://", 0) == 0;
  if (want_tls && (tls_cert.empty() || tls_key.empty()))
    die("--listen tcp+tls:// needs --tls-cert FILE and --tls-key FILE (PEM; see docs/tls.md)");
  if (!want_tls && (!tls_cert.empty() || !tls_key.empty()))
    die("--tls-cert and --tls-key are for tcp+tls:// listeners; add --listen tcp+tls://HOST:PORT");
  if (want_tls) {
    try {
      tls = farmem::net::tcp::TlsContext::server(tls_cert, tls_key);
    } catch (const farmem::Error& e) {
      die(e.what());
    }
  }
  std::vector<server::Listener> listeners;
  bool have_dpdk = false;
  for (const std::string& l : listens) listeners.push_back(make_listener(l, &have_dpdk, tls));
  server::CapacityAccount account(capacity);
  return server::run_listeners(listeners, account, token, stats_interval);
}
