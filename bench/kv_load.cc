// farmem-kv-load: a load generator for farmem-kv (or any memcached-protocol
// server). It stores --keys values of --value-size bytes, then runs --ops
// multi-key gets of --batch keys each from --connections connections (one
// thread each), over uniform or zipf (theta 0.99) keys, checking every value.
// A missing value is an error unless --allow-misses (a cache that evicts):
// then the hit rate is reported; --set-on-miss also stores a missed value
// again, as a look-aside cache's client does (the time counts in the run). Prints one JSON object, with the p50 and p99
// latency of a get request.
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "zipf.hpp"

namespace {

[[noreturn]] void die(const std::string& msg) {
  std::fprintf(stderr, "farmem-kv-load: %s\n", msg.c_str());
  std::exit(2);
}

struct Options {
  std::string host = "127.0.0.1", port = "11311";
  unsigned long keys = 100000, value_size = 4096, ops = 200000, batch = 16, connections = 8;
  std::string workload = "uniform";
  bool load = true;
  bool allow_misses = false;
  bool set_on_miss = false;  // implies allow_misses
};

unsigned long parse_count(const std::string& flag, const std::string& v) {
  char* end = nullptr;
  unsigned long x = std::strtoul(v.c_str(), &end, 10);
  if (v.empty() || v[0] == '-' || *end != 0 || x == 0) die(flag + " '" + v + "' is not a positive integer");
  return x;
}

// Value bytes for key k: cheap to make and to check.
char value_byte(unsigned long k, std::size_t i) { return static_cast<char>('a' + (k * 31 + i * 7) % 26); }

class Conn {
 public:
  explicit Conn(const Options& o) {
    addrinfo hints{}, *res = nullptr;
    hints.ai_socktype = SOCK_STREAM;
    if (getaddrinfo(o.host.c_str(), o.port.c_str(), &hints, &res) != 0) die("cannot resolve " + o.host);
    fd_ = socket(res->ai_family, SOCK_STREAM, 0);
    if (fd_ < 0 || connect(fd_, res->ai_addr, res->ai_addrlen) != 0)
      die("cannot connect to " + o.host + ":" + o.port + ": " + std::strerror(errno) + "; is farmem-kv running?");
    freeaddrinfo(res);
    int one = 1;
    setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
  ~Conn() { close(fd_); }
  void send_all(const std::string& s) {
    for (std::size_t off = 0; off < s.size();) {
      ssize_t n = send(fd_, s.data() + off, s.size() - off, MSG_NOSIGNAL);
      if (n <= 0) die("the server closed the connection");
      off += static_cast<std::size_t>(n);
    }
  }
  std::string line() {
    for (;;) {
      std::size_t nl = buf_.find("\r\n", pos_);
      if (nl != std::string::npos) {
        std::string l = buf_.substr(pos_, nl - pos_);
        pos_ = nl + 2;
        return l;
      }
      more();
    }
  }
  std::string exact(std::size_t n) {
    while (buf_.size() - pos_ < n) more();
    std::string s = buf_.substr(pos_, n);
    pos_ += n;
    return s;
  }

 private:
  void more() {
    if (pos_ > 0) buf_.erase(0, pos_), pos_ = 0;
    char tmp[65536];
    ssize_t n = recv(fd_, tmp, sizeof tmp, 0);
    if (n <= 0) die("the server closed the connection");
    buf_.append(tmp, static_cast<std::size_t>(n));
  }
  int fd_ = -1;
  std::string buf_;
  std::size_t pos_ = 0;
};

std::string key_of(unsigned long k) { return "key:" + std::to_string(k); }

}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) die(a + " needs a value; see --help");
      return argv[++i];
    };
    if (a == "--server") {
      std::string v = value();
      std::size_t c = v.rfind(':');
      if (c == std::string::npos || c == 0 || c + 1 == v.size()) die("--server '" + v + "' is not HOST:PORT");
      o.host = v.substr(0, c), o.port = v.substr(c + 1);
    } else if (a == "--keys") o.keys = parse_count(a, value());
    else if (a == "--value-size") o.value_size = parse_count(a, value());
    else if (a == "--ops") o.ops = parse_count(a, value());
    else if (a == "--batch") o.batch = parse_count(a, value());
    else if (a == "--connections") o.connections = parse_count(a, value());
    else if (a == "--workload") {
      o.workload = value();
      if (o.workload != "uniform" && o.workload != "zipf") die("--workload '" + o.workload + "' is not uniform or zipf");
    } else if (a == "--no-load") o.load = false;
    else if (a == "--allow-misses") o.allow_misses = true;
    else if (a == "--set-on-miss") o.allow_misses = o.set_on_miss = true;
    else if (a == "--help" || a == "-h") {
      std::puts("usage: farmem-kv-load [--server HOST:PORT (127.0.0.1:11311)] [--keys N (100000)] "
                "[--value-size B (4096)] [--ops N (200000)] [--batch K (16)] [--connections C (8)] "
                "[--workload uniform|zipf] [--no-load] [--allow-misses] [--set-on-miss]");
      return 0;
    } else die("unknown option " + a + "; see --help");
  }
  if (o.value_size > (1u << 20)) die("--value-size must be at most 1048576 (the server's item limit)");
  if (o.connections > 1024) die("--connections must be at most 1024");

  double load_s = 0;
  if (o.load) {
    auto t0 = std::chrono::steady_clock::now();
    std::vector<std::thread> ts;
    for (unsigned long c = 0; c < o.connections; ++c)
      ts.emplace_back([&, c] {
        Conn conn(o);
        std::string v(o.value_size, 0);
        for (unsigned long k = c; k < o.keys; k += o.connections) {
          for (std::size_t i = 0; i < v.size(); ++i) v[i] = value_byte(k, i);
          conn.send_all("set " + key_of(k) + " 0 0 " + std::to_string(v.size()) + "\r\n" + v + "\r\n");
          std::string r = conn.line();
          if (r != "STORED") die("set " + key_of(k) + ": " + r);
        }
      });
    for (auto& t : ts) t.join();
    load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }

  std::unique_ptr<const farmem::bench::Zipf> zipf_law;
  if (o.workload == "zipf") zipf_law = std::make_unique<const farmem::bench::Zipf>(o.keys, 0.99);
  const farmem::bench::Zipf* zipf = zipf_law.get();
  std::atomic<unsigned long> bad{0}, misses{0};
  const unsigned long per_conn = (o.ops + o.connections - 1) / o.connections;
  std::vector<std::vector<std::uint32_t>> lat_ns(o.connections);  // per get request
  auto t0 = std::chrono::steady_clock::now();
  std::vector<std::thread> ts;
  for (unsigned long c = 0; c < o.connections; ++c)
    ts.emplace_back([&, c] {
      Conn conn(o);
      lat_ns[c].reserve(per_conn);
      std::mt19937_64 rng(c * 7919 + 1);
      std::vector<unsigned long> ks(o.batch);
      for (unsigned long op = 0; op < per_conn; ++op) {
        std::string req = "get";
        for (auto& k : ks) {
          k = zipf ? zipf->at(std::uniform_real_distribution<double>(0, 1)(rng)) : rng() % o.keys;
          req += ' ';
          req += key_of(k);
        }
        const auto r0 = std::chrono::steady_clock::now();
        conn.send_all(req + "\r\n");
        std::size_t got = 0;
        std::vector<unsigned long> missing(ks);
        for (;;) {
          std::string l = conn.line();
          if (l == "END") break;
          // VALUE key:K 0 N
          unsigned long k = std::strtoul(l.c_str() + 10, nullptr, 10);
          if (auto m = std::find(missing.begin(), missing.end(), k); m != missing.end()) missing.erase(m);
          std::size_t n = std::strtoul(l.c_str() + l.rfind(' ') + 1, nullptr, 10);
          std::string data = conn.exact(n + 2);
          if (n != o.value_size || data[0] != value_byte(k, 0) || data[n - 1] != value_byte(k, n - 1)) ++bad;
          ++got;
        }
        lat_ns[c].push_back(static_cast<std::uint32_t>(std::min<std::int64_t>(
            std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - r0).count(),
            UINT32_MAX)));
        // A key drawn twice in one batch is answered twice; a miss means a lost value.
        if (got != ks.size()) misses += ks.size() - got;
        if (o.set_on_miss)  // a look-aside cache's client: what missed is stored again
          for (unsigned long k : missing) {
            std::string v(o.value_size, 0);
            for (std::size_t i = 0; i < v.size(); ++i) v[i] = value_byte(k, i);
            conn.send_all("set " + key_of(k) + " 0 0 " + std::to_string(v.size()) + "\r\n" + v + "\r\n");
            if (std::string r = conn.line(); r != "STORED") die("set " + key_of(k) + ": " + r);
          }
      }
    });
  for (auto& t : ts) t.join();
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double keys_read = static_cast<double>(per_conn * o.connections * o.batch);
  std::vector<std::uint32_t> all;
  for (auto& v : lat_ns) all.insert(all.end(), v.begin(), v.end());
  std::sort(all.begin(), all.end());
  auto pct = [&](double p) { return all.empty() ? 0.0 : all[static_cast<std::size_t>(p * (all.size() - 1))] / 1000.0; };
  std::printf("{\"server\":\"%s:%s\",\"workload\":\"%s\",\"keys\":%lu,\"value_size\":%lu,\"connections\":%lu,"
              "\"batch\":%lu,\"gets\":%lu,\"load_seconds\":%.3f,\"seconds\":%.3f,\"keys_per_sec\":%.0f,"
              "\"ns_per_key\":%.1f,\"hit_rate\":%.4f,\"p50_us\":%.1f,\"p99_us\":%.1f,\"verified\":%s}\n",
              o.host.c_str(), o.port.c_str(), o.workload.c_str(), o.keys, o.value_size, o.connections, o.batch,
              per_conn * o.connections, load_s, s, keys_read / s, s * 1e9 / keys_read,
              1.0 - static_cast<double>(misses.load()) / keys_read, pct(0.5), pct(0.99),
              bad == 0 && (misses == 0 || o.allow_misses) ? "true" : "false");
  if (bad || (misses && !o.allow_misses)) {
    std::fprintf(stderr, "farmem-kv-load: %lu wrong and %lu missing values\n", bad.load(), misses.load());
    return 1;
  }
  return 0;
}
