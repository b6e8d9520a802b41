// farmem-server: the memory node. Serves far memory to clients over tcp://
// (--listen), or runs as the embedded shm server a runtime starts for itself
// (--shm-fd, internal).
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "farmem/runtime.hpp"
#include "net/wire.hpp"
#include "server/shm_server.hpp"
#include "server/tcp_server.hpp"

namespace {
void usage(FILE* out) {
  std::fprintf(out,
               "usage: farmem-server --listen tcp://HOST:PORT --capacity SIZE [--token-file FILE]\n"
               "                     [--stats-interval SECONDS]\n"
               "  Serves SIZE bytes of far memory (e.g. 16G) to farmem clients; each client gets\n"
               "  its own memory, reclaimed when it disconnects. PORT 0 picks a free port (printed).\n"
               "  With --token-file, clients must present the same token (FARMEM_TOKEN_FILE).\n"
               "  SIGUSR1 prints a usage line; SIGTERM stops it.\n"
               "       farmem-server --shm-fd FD --capacity BYTES   (internal: the embedded server)\n");
}
[[noreturn]] void die(const std::string& msg) {
  std::fprintf(stderr, "farmem-server: %s\n", msg.c_str());
  std::exit(2);
}
}  // namespace

int main(int argc, char** argv) {
  int shm_fd = -1;
  std::uint64_t capacity = 0;
  std::string listen, token_file;
  unsigned stats_interval = 0;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") { usage(stdout); return 0; }
    if (i + 1 >= argc) die(a + " needs a value; see --help");
    std::string v = argv[++i];
    try {
      if (a == "--shm-fd") shm_fd = std::stoi(v);
      else if (a == "--capacity") capacity = farmem::parse_size(v, "--capacity");
      else if (a == "--listen") listen = v;
      else if (a == "--token-file") token_file = v;
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
    return farmem::server::run_shm(shm_fd, capacity);
  }
  if (listen.empty()) die("--listen tcp://HOST:PORT is required; see --help");
  if (capacity == 0) die("--capacity SIZE is required (e.g. --capacity 16G)");
  farmem::server::TcpServerOptions opt;
  if (listen.rfind("rdma://", 0) == 0 || listen.rfind("dpdk://", 0) == 0)
    die("--listen " + listen + ": the rdma and dpdk listeners are not built yet; use tcp://HOST:PORT");
  if (listen.rfind("tcp://", 0) != 0) die("--listen " + listen + " is not tcp://HOST:PORT");
  std::string rest = listen.substr(6);
  std::size_t colon = rest.rfind(':');
  if (colon == std::string::npos) die("--listen " + listen + " is not tcp://HOST:PORT");
  opt.host = rest.substr(0, colon);
  if (opt.host.size() > 1 && opt.host.front() == '[') opt.host = opt.host.substr(1, opt.host.size() - 2);
  char* end = nullptr;
  long port = std::strtol(rest.c_str() + colon + 1, &end, 10);
  if (*end || port < 0 || port > 65535 || colon + 1 == rest.size())
    die("--listen " + listen + ": port must be 0-65535");
  opt.port = static_cast<std::uint16_t>(port);
  opt.capacity = capacity;
  opt.stats_interval_s = stats_interval;
  if (!token_file.empty()) {
    if (!farmem::net::wire::read_token_file(token_file, &opt.token))
      die("cannot read --token-file " + token_file + ": " + std::strerror(errno));
    if (opt.token.empty()) die("--token-file " + token_file + " is empty");
  }
  return farmem::server::run_tcp(opt);
}
