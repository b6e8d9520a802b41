// farmem-kv: a key-value server whose values live in far memory, speaking the
// memcached text protocol (get, set, delete, stats, version, quit), so any
// memcached client can use it. One uthread per connection: a connection
// waiting for its client, or for a far value on its way in, parks and the
// scheduler serves the others.
//
//   farmem-kv [--listen HOST:PORT] [--local-mem SIZE|PCT%] [--capacity SIZE]
//             [--threads N] [--max-connections N]
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
#include <vector>

#include "farmem/runtime.hpp"
#include "farmem/uthread.hpp"
#include "store.hpp"

namespace {

constexpr std::size_t kMaxLine = 2048;

std::atomic<bool> g_stop{false};
std::atomic<int> g_connections{0};
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
    } else if (a == "--help" || a == "-h") {
      std::puts("usage: farmem-kv [--listen HOST:PORT (127.0.0.1:11311)] [--local-mem SIZE|PCT%] "
                "[--capacity SIZE (4G)] [--threads N (CPUs - 1)] [--max-connections N (4096)]\n"
                "Other settings come from FARMEM_* variables (docs/configuration.md).");
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

std::vector<std::string> split(const std::string& line) {
  std::vector<std::string> w;
  std::size_t i = 0;
  while (i < line.size()) {
    while (i < line.size() && line[i] == ' ') ++i;
    std::size_t j = i;
    while (j < line.size() && line[j] != ' ') ++j;
    if (j > i) w.push_back(line.substr(i, j - i));
    i = j;
  }
  return w;
}

bool parse_u64(const std::string& s, std::uint64_t& out) {
  if (s.empty() || s.size() > 19) return false;
  out = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    out = out * 10 + static_cast<std::uint64_t>(c - '0');
  }
  return true;
}

// One client connection: reads commands, answers them, until quit or EOF.
class Connection {
 public:
  Connection(int fd, farmem_kv::Store& store) : fd_(fd), store_(store) {}
  ~Connection() { close(fd_); }

  void serve() {
    std::string line;
    while (read_line(line)) {
      std::vector<std::string> w = split(line);
      if (w.empty()) {
        if (!reply("ERROR\r\n")) return;
        continue;
      }
      const std::string& cmd = w[0];
      bool ok;
      if (cmd == "get" || cmd == "gets") ok = get(w);
      else if (cmd == "set") ok = set(w);
      else if (cmd == "delete") ok = del(w);
      else if (cmd == "stats") ok = stats();
      else if (cmd == "version") ok = reply("VERSION farmem-kv 1\r\n");
      else if (cmd == "quit") return;
      else ok = reply("ERROR\r\n");
      if (!ok) return;
    }
  }

 private:
  bool fill() {
    char buf[16384];
    for (;;) {
      ssize_t n = recv(fd_, buf, sizeof buf, 0);
      if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
        farmem::uthread::wait_fd(fd_, POLLIN);
        continue;
      }
      if (n <= 0) return false;
      in_.append(buf, static_cast<std::size_t>(n));
      return true;
    }
  }
  // A command line without its "\r\n" (or "\n"). False on EOF or a line too long.
  bool read_line(std::string& line) {
    for (;;) {
      std::size_t nl = in_.find('\n');
      if (nl != std::string::npos) {
        line.assign(in_, 0, nl > 0 && in_[nl - 1] == '\r' ? nl - 1 : nl);
        in_.erase(0, nl + 1);
        return true;
      }
      if (in_.size() > kMaxLine) {
        reply("CLIENT_ERROR line too long\r\n");
        return false;
      }
      if (!fill()) return false;
    }
  }
  bool read_exact(std::string& out, std::size_t n) {
    while (in_.size() < n)
      if (!fill()) return false;
    out.assign(in_, 0, n);
    in_.erase(0, n);
    return true;
  }
  bool reply(const std::string& s) { return send_all(fd_, s); }

  bool get(const std::vector<std::string>& w) {
    if (w.size() < 2) return reply("ERROR\r\n");
    std::string out;
    for (std::size_t i = 1; i < w.size(); ++i) {
      if (w[i].size() > farmem_kv::Store::kMaxKey) return reply("CLIENT_ERROR bad command line format\r\n");
      std::optional<farmem_kv::Value> v = store_.get(w[i]);
      if (!v) continue;
      out += "VALUE " + w[i] + " " + std::to_string(v->flags) + " " + std::to_string(v->data.size()) + "\r\n";
      out += v->data;
      out += "\r\n";
      if (out.size() >= (256u << 10)) {  // stream big answers instead of holding them all
        if (!reply(out)) return false;
        out.clear();
      }
    }
    out += "END\r\n";
    return reply(out);
  }

  bool set(const std::vector<std::string>& w) {
    std::uint64_t flags, exptime, bytes;
    if (w.size() < 5 || w.size() > 6 || w[1].size() > farmem_kv::Store::kMaxKey || !parse_u64(w[2], flags) ||
        flags > 0xffffffffu || !parse_u64(w[3], exptime) || !parse_u64(w[4], bytes) ||
        (w.size() == 6 && w[5] != "noreply"))
      return reply("CLIENT_ERROR bad command line format\r\n");
    const bool noreply = w.size() == 6;
    if (bytes > farmem_kv::Store::kMaxValue) {
      // Skip the data block, as memcached does, so the connection stays usable
      // (unless it is absurdly large: then the connection ends).
      std::string skip;
      if (bytes > 16 * farmem_kv::Store::kMaxValue || !read_exact(skip, bytes + 2)) {
        reply("SERVER_ERROR object too large for cache\r\n");
        return false;
      }
      return reply("SERVER_ERROR object too large for cache\r\n");
    }
    std::string data;
    if (!read_exact(data, bytes + 2)) return false;
    if (data[bytes] != '\r' || data[bytes + 1] != '\n') {
      reply("CLIENT_ERROR bad data chunk\r\n");
      return false;  // the stream is out of step with the commands: end it
    }
    data.resize(bytes);
    if (exptime != 0) return reply("CLIENT_ERROR expiry is not supported; use exptime 0\r\n");
    switch (store_.set(w[1], static_cast<std::uint32_t>(flags), data)) {
      case farmem_kv::Store::SetResult::Stored:
        return noreply || reply("STORED\r\n");
      case farmem_kv::Store::SetResult::TooLarge:
        return reply("SERVER_ERROR object too large for cache\r\n");
      case farmem_kv::Store::SetResult::OutOfMemory:
        return reply("SERVER_ERROR out of memory storing object\r\n");
    }
    return false;
  }

  bool del(const std::vector<std::string>& w) {
    if (w.size() < 2 || w.size() > 3 || (w.size() == 3 && w[2] != "noreply"))
      return reply("CLIENT_ERROR bad command line format\r\n");
    const bool found = store_.remove(w[1]);
    return w.size() == 3 || reply(found ? "DELETED\r\n" : "NOT_FOUND\r\n");
  }

  bool stats() {
    const farmem::Stats s = farmem::stats();
    auto stat = [](const char* name, std::uint64_t v) { return std::string("STAT ") + name + " " + std::to_string(v) + "\r\n"; };
    std::string out = stat("pid", static_cast<std::uint64_t>(getpid())) + stat("curr_items", store_.items()) +
                      stat("bytes", store_.value_bytes()) + stat("limit_maxbytes", store_.capacity()) +
                      stat("curr_connections", static_cast<std::uint64_t>(g_connections.load())) +
                      stat("threads", farmem::uthread::scheduler_count()) +
                      stat("far_slab_bytes", store_.far_bytes()) + stat("local_mem_bytes", s.local_mem_bytes) +
                      stat("resident_bytes", s.resident_bytes) + stat("far_bytes", s.far_bytes) +
                      stat("faults", s.faults) + stat("fetches", s.fetches) + stat("evictions", s.evictions) +
                      stat("writebacks", s.writebacks) + "END\r\n";
    return reply(out);
  }

  int fd_;
  farmem_kv::Store& store_;
  std::string in_;
};

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
  std::printf("farmem-kv: listening on %s:%u (local memory %llu MiB, capacity %llu MiB)\n", o.host.c_str(),
              bound_port(lfd), static_cast<unsigned long long>(cfg.local_mem_bytes >> 20),
              static_cast<unsigned long long>(o.capacity >> 20));
  std::fflush(stdout);

  farmem_kv::Store store(o.capacity);
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
    if (g_connections.load() >= static_cast<int>(o.max_connections)) {
      send_all(fd, "SERVER_ERROR too many connections\r\n");
      close(fd);
      continue;
    }
    g_connections.fetch_add(1);
    {
      std::lock_guard<std::mutex> g(g_open_mu);
      g_open.insert(fd);
    }
    farmem::uthread::spawn([fd, &store] {
      {
        Connection c(fd, store);
        c.serve();
        std::lock_guard<std::mutex> g(g_open_mu);
        g_open.erase(fd);
      }  // closes fd, after it left g_open: a shutdown() below never hits a reused number
      g_connections.fetch_sub(1);
    }).detach();
  }
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
