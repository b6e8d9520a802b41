// farmem-server: the memory node. Today it runs as the embedded (shm) server that
// the runtime starts for itself; network listeners (tcp, rdma, dpdk) come next.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "server/shm_server.hpp"

namespace {
void usage(FILE* out) {
  std::fprintf(out,
               "usage: farmem-server --shm-fd FD --capacity BYTES\n"
               "  Started by the farmem runtime as its embedded memory server (FARMEM_BACKEND=shm).\n"
               "  Network listeners (--listen tcp://, rdma://, dpdk://) are not built yet.\n");
}
}  // namespace

int main(int argc, char** argv) {
  int fd = -1;
  unsigned long long capacity = 0;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") { usage(stdout); return 0; }
    if (i + 1 >= argc) { std::fprintf(stderr, "farmem-server: %s needs a value; see --help\n", a.c_str()); return 2; }
    char* end = nullptr;
    if (a == "--shm-fd") {
      fd = static_cast<int>(std::strtol(argv[++i], &end, 10));
    } else if (a == "--capacity") {
      capacity = std::strtoull(argv[++i], &end, 10);
    } else if (a == "--listen") {
      std::fprintf(stderr, "farmem-server: --listen is not implemented yet; only the embedded shm server exists\n");
      return 2;
    } else {
      std::fprintf(stderr, "farmem-server: unknown option %s; see --help\n", a.c_str());
      return 2;
    }
    if (end == nullptr || *end != '\0') {
      std::fprintf(stderr, "farmem-server: bad number for %s: %s\n", a.c_str(), argv[i]);
      return 2;
    }
  }
  if (fd < 0 || capacity == 0) {
    std::fprintf(stderr, "farmem-server: --shm-fd and --capacity are required; see --help\n");
    return 2;
  }
  return farmem::server::run_shm(fd, capacity);
}
