// farmem-kv: a key-value server whose values live in far memory, speaking the
// memcached text protocol (protocol.cc), so any memcached client can use it.
// This file owns the process: options, the runtime, the listening socket, one
// uthread per accepted connection, the expiry sweep, and shutdown on SIGTERM.
// A connection waiting for its client, or for a far value on its way in, parks
// and the scheduler serves the others.
//
//   farmem-kv [--listen HOST:PORT] [--local-mem SIZE|PCT%] [--capacity SIZE]
//             [--cache] [--threads N] [--max-connections N]
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "farmem/runtime.hpp"
#include "farmem/uthread.hpp"
#include "protocol.hpp"
#include "store.hpp"

namespace {

std::atomic<bool> g_stop{false};
std::mutex g_open_mu;
std::set<int> g_open;  // connection sockets, shut down at exit

[[noreturn]] void die(const std::string& msg, int code = 2) {
  std::fprintf(stderr, "farmem-kv: %s\n", msg.c_str());
  std::exit(code);
}

struct Options {
  std::string host = "127.0.0.1";
  std::string port = "11311";
  std::string local_mem;
  std::uint64_t capacity = 4ull << 30;
  unsigned threads = 0;          // uthread schedulers; 0 = one per CPU but the evictor's
  unsigned max_connections = 4096;
  bool cache = false;            // drop least recently used values at capacity
};

unsigned parse_count(const std::string& flag, const std::string& v, unsigned lo, unsigned hi) {
  char* end = nullptr;
  unsigned long x = std::strtoul(v.c_str(), &end, 10);
  if (v.empty() || v[0] == '-' || *end != 0 || x < lo || x > hi)
    die(flag + " '" + v + "' is not a number from " + std::to_string(lo) + " to " + std::to_string(hi));
  return static_cast<unsigned>(x);
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) die(a + " needs a value; see --help");
      return argv[++i];
    };
    if (a == "--listen") {
      std::string v = value();
      std::size_t colon = v.rfind(':');
      if (colon == std::string::npos || colon == 0 || colon + 1 == v.size())
        die("--listen '" + v + "' is not HOST:PORT; write e.g. 127.0.0.1:11311");
      o.host = v.substr(0, colon);
      o.port = v.substr(colon + 1);
      char* end = nullptr;
      long p = std::strtol(o.port.c_str(), &end, 10);
      if (*end != 0 || p < 0 || p > 65535) die("--listen '" + v + "': port must be 0-65535");
    } else if (a == "--local-mem") {
      o.local_mem = value();
    } else if (a == "--capacity") {
      try {
        o.capacity = farmem::parse_size(value(), "--capacity");
      } catch (const farmem::Error& e) {
        die(e.what());
      }
      if (o.capacity < (1ull << 20)) die("--capacity must be at least 1M");
    } else if (a == "--threads") {
      o.threads = parse_count(a, value(), 1, 60);
    } else if (a == "--max-connections") {
      o.max_connections = parse_count(a, value(), 1, 1000000);
    } else if (a == "--cache") {
      o.cache = true;
    } else if (a == "--help" || a == "-h") {
      std::puts("usage: farmem-kv [--listen HOST:PORT (127.0.0.1:11311)] [--local-mem SIZE|PCT%] "
                "[--capacity SIZE (4G)] [--cache] [--threads N (CPUs - 1)] [--max-connections N (4096)]\n"
                "A store by default: at --capacity a set fails with SERVER_ERROR out of memory storing object.\n"
                "--cache: at --capacity the least recently used values are dropped, as memcached does.\n"
                "Commands and options: docs/kv.md. Other settings come from FARMEM_* variables "
                "(docs/configuration.md).");
      std::exit(0);
    } else {
      die("unknown option " + a + "; see --help");
    }
  }
  return o;
}

int listen_on(const Options& o) {
  addrinfo hints{}, *res = nullptr;
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  if (int e = getaddrinfo(o.host.c_str(), o.port.c_str(), &hints, &res); e != 0)
    die("cannot resolve '" + o.host + "': " + gai_strerror(e) + "; give an address of this machine to --listen");
  int fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (fd < 0 || bind(fd, res->ai_addr, res->ai_addrlen) != 0 || listen(fd, 128) != 0) {
    int e = errno;
    freeaddrinfo(res);
    die("cannot listen on " + o.host + ":" + o.port + ": " + std::strerror(e) +
        "; pick a free port with --listen");
  }
  freeaddrinfo(res);
  return fd;
}

std::uint16_t bound_port(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
  if (ss.ss_family == AF_INET6) return ntohs(reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port);
  return ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
}

// Sockets are non-blocking: a uthread that would block parks in wait_fd.
bool send_all(int fd, const std::string& s) {
  for (std::size_t off = 0; off < s.size();) {
    ssize_t n = send(fd, s.data() + off, s.size() - off, MSG_NOSIGNAL);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
      farmem::uthread::wait_fd(fd, POLLOUT);
      continue;
    }
    if (n <= 0) return false;
    off += static_cast<std::size_t>(n);
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = parse(argc, argv);
  farmem::Config cfg;
  try {
    cfg = farmem::Config::from_env();
    if (!o.local_mem.empty())
      cfg.local_mem_bytes = farmem::parse_size_or_percent(o.local_mem, farmem::physical_memory_bytes(), "--local-mem");
    farmem::check_config(cfg);
    if (o.capacity > cfg.far_mem_bytes)
      die("--capacity " + std::to_string(o.capacity >> 20) + " MiB is more than far memory (" +
          std::to_string(cfg.far_mem_bytes >> 20) + " MiB); lower it or raise FARMEM_FAR_MEM");
    farmem::init(cfg);
  } catch (const farmem::Error& e) {
    die(e.what());
  }
  // One descriptor per connection: lift the soft limit to the hard one.
  rlimit nofile{};
  if (getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur < nofile.rlim_max) {
    nofile.rlim_cur = nofile.rlim_max;
    setrlimit(RLIMIT_NOFILE, &nofile);
  }
  const int lfd = listen_on(o);  // before the schedulers start: die() must not run with them
  farmem::uthread::start(o.threads);
  std::signal(SIGTERM, [](int) { g_stop.store(true); });
  std::signal(SIGINT, [](int) { g_stop.store(true); });
  std::printf("farmem-kv: listening on %s:%u (local memory %llu MiB, capacity %llu MiB, %s)\n", o.host.c_str(),
              bound_port(lfd), static_cast<unsigned long long>(cfg.local_mem_bytes >> 20),
              static_cast<unsigned long long>(o.capacity >> 20), o.cache ? "cache" : "store");
  std::fflush(stdout);

  farmem_kv::Store store(farmem_kv::Store::Options{o.capacity, o.cache, {}, {}});
  farmem_kv::Server server(store);
  server.host = o.host;
  server.port = bound_port(lfd);
  server.max_connections = o.max_connections;
  server.local_mem_bytes = cfg.local_mem_bytes;
  server.started = store.now();
  // Expired and flushed values give their memory back within a second, read or not.
  std::thread sweeper([&store] {
    for (unsigned tick = 0; !g_stop.load(); ++tick) {
      usleep(100000);
      if (tick % 10 == 9) store.sweep();
    }
  });
  while (!g_stop.load()) {
    pollfd p{lfd, POLLIN, 0};
    if (poll(&p, 1, 200) <= 0) continue;
    int fd = accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) {
      if (errno == EMFILE || errno == ENFILE) usleep(10000);  // out of descriptors: let some close
      continue;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (server.curr_connections.load() >= o.max_connections) {
      send_all(fd, "SERVER_ERROR too many connections\r\n");
      close(fd);
      server.rejected_connections.fetch_add(1);
      continue;
    }
    server.curr_connections.fetch_add(1);
    server.total_connections.fetch_add(1);
    {
      std::lock_guard<std::mutex> g(g_open_mu);
      g_open.insert(fd);
    }
    farmem::uthread::spawn([fd, &server] {
      {
        farmem_kv::Connection c(fd, server);
        c.serve();
        std::lock_guard<std::mutex> g(g_open_mu);
        g_open.erase(fd);
      }  // closes fd, after it left g_open: a shutdown() below never hits a reused number
      server.curr_connections.fetch_sub(1);
    }).detach();
  }
  sweeper.join();
  close(lfd);
  // Wake every connection out of its wait and let it finish its command, then
  // stop the schedulers and exit normally (statistics print, the memory server stops).
  {
    std::lock_guard<std::mutex> g(g_open_mu);
    for (int fd : g_open) shutdown(fd, SHUT_RDWR);
  }
  farmem::uthread::stop();
  std::fflush(stdout);
  std::exit(0);
}
