#include "server/listener.hpp"

#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstdio>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>

#include "farmem/runtime.hpp"
#include "runtime/live_stats.hpp"
#include "runtime/metrics.hpp"

namespace farmem::server {

// Every listener reports once whether it started; none serves until all have.
class StartGate {
 public:
  StartGate(std::size_t listeners, const CapacityAccount& account, const std::string& token)
      : pending_(listeners), total_(listeners), account_(account), token_(token) {}

  bool arrive(bool ok) {
    std::unique_lock<std::mutex> g(mu_);
    if (!ok) failed_ = true;
    if (--pending_ == 0 && !failed_ && !aborted_) opened_ = true;
    if (opened_ && total_ > 1) {
      std::printf("farmem-server: serving %zu listeners, capacity %llu MiB shared, token %s\n", total_,
                  static_cast<unsigned long long>(account_.capacity() >> 20),
                  token_.empty() ? "not required" : "required");
      std::fflush(stdout);
    }
    cv_.notify_all();
    cv_.wait(g, [&] { return pending_ == 0 || failed_ || aborted_; });
    return !failed_ && !aborted_;
  }

  // True once every listener started and they serve.
  bool opened() {
    std::lock_guard<std::mutex> g(mu_);
    return opened_;
  }

  void abort() {
    std::lock_guard<std::mutex> g(mu_);
    aborted_ = true;
    cv_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::size_t pending_;
  const std::size_t total_;
  bool failed_ = false, aborted_ = false, opened_ = false;
  const CapacityAccount& account_;
  const std::string& token_;
};

Control::Control(StartGate& gate) : gate_(gate), fd_(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {}

Control::~Control() {
  if (fd_ >= 0) close(fd_);
}

bool Control::started(bool ok) { return gate_.arrive(ok); }

Control::Requests Control::take() {
  Requests r;
  if (!usage_.load(std::memory_order_relaxed) && !stop_.load(std::memory_order_relaxed)) return r;
  std::uint64_t n;
  while (read(fd_, &n, sizeof n) == sizeof n) {
  }
  r.usage = usage_.exchange(false);
  r.stop = stop_.load();
  return r;
}

void Control::wake() {
  std::uint64_t one = 1;
  while (write(fd_, &one, sizeof one) < 0 && errno == EINTR) {
  }
}

void Control::ask_usage() {
  usage_.store(true);
  wake();
}

void Control::ask_stop() {
  stop_.store(true);
  wake();
}

std::string usage_head(const char* why, const char* transport, const ListenerContext& ctx, const std::string& uri) {
  std::string s = std::string("{\"farmem_server\":\"") + why + "\"";
  if (transport) s += std::string(",\"transport\":\"") + transport + "\"";
  if (ctx.several) {
    s += ",\"listener\":\"";
    for (char c : uri) {
      if (c == '"' || c == '\\') s += '\\';
      if (static_cast<unsigned char>(c) >= 0x20) s += c;
    }
    s += "\"";
  }
  return s;
}

std::string host_port_uri(const char* scheme, const std::string& host, unsigned port) {
  const bool v6 = host.find(':') != std::string::npos;
  return std::string(scheme) + "://" + (v6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

namespace {

void print_server_usage(const char* why, std::size_t listeners, const CapacityAccount& account) {
  CapacityAccount::Usage u = account.usage();
  std::printf("{\"farmem_server\":\"%s\",\"listeners\":%zu,\"clients\":%zu,\"granted_bytes\":%llu,"
              "\"capacity_bytes\":%llu}\n",
              why, listeners, u.sessions, static_cast<unsigned long long>(u.granted),
              static_cast<unsigned long long>(account.capacity()));
  std::fflush(stdout);
}

std::uint64_t now_ms() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1000 + static_cast<std::uint64_t>(ts.tv_nsec) / 1'000'000;
}

// What farmem-stat and FARMEM_METRICS show of a server: the capacity account
// (clients, granted and capacity bytes) and a row per client session (granted,
// written and read bytes), refreshed by the main thread.
void fill_snapshot(live::Snapshot& s, std::size_t listeners, const CapacityAccount& account) {
  CapacityAccount::Usage u = account.usage();
  s.counters[0] = listeners;
  s.counters[1] = u.sessions;
  s.counters[2] = u.granted;
  s.counters[3] = account.capacity();
  s.nrows = s.rows_dropped = 0;
  for (const auto& c : account.clients())
    s.add_row(c->session, c->client, c->granted.load(std::memory_order_relaxed),
              c->written.load(std::memory_order_relaxed), c->read.load(std::memory_order_relaxed));
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  s.updated_ns = static_cast<std::uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<std::uint64_t>(ts.tv_nsec);
}

std::string server_info(const std::vector<Listener>& listeners, const std::string& token, const char* metrics) {
  std::string j = "{\"listen\":[";
  for (std::size_t i = 0; i < listeners.size(); ++i) {
    j += i ? ",\"" : "\"";
    for (char c : listeners[i].uri) {
      if (c == '"' || c == '\\') j += '\\';
      if (static_cast<unsigned char>(c) >= 0x20) j += c;
    }
    j += "\"";
  }
  j += std::string("],\"token\":") + (token.empty() ? "\"not required\"" : "\"required\"");
  if (metrics) j += std::string(",\"metrics\":\"") + metrics + "\"";
  return j + "}";
}

}  // namespace

int run_listeners(const std::vector<Listener>& listeners, CapacityAccount& account, const std::string& token,
                  unsigned stats_interval_s) {
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGTERM);
  sigaddset(&mask, SIGINT);
  sigaddset(&mask, SIGUSR1);
  sigaddset(&mask, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &mask, nullptr);  // before any thread (ours or DPDK's) starts: all inherit it
  const int sfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
  const int ended = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);  // a listener's thread returned
  if (sfd < 0 || ended < 0) {
    std::perror("farmem-server: signalfd/eventfd");
    return 1;
  }

  const std::size_t n = listeners.size();
  const bool several = n > 1;

  // Live statistics (FARMEM_STATS_DIR) and FARMEM_METRICS, before any listener starts.
  std::unique_ptr<live::Publisher> pub;
  std::unique_ptr<metrics::Server> prom;
  const std::uint64_t started_ns = now_ms() * 1000000;
  {
    const char* dir = getenv("FARMEM_STATS_DIR");
    std::string err;
    pub = live::Publisher::create(dir && *dir ? dir : live::kDefaultDir, live::kKindServer, &err);
    if (!pub && !err.empty() && dir && *dir) {
      std::fprintf(stderr, "farmem-server: FARMEM_STATS_DIR=%s: %s; point it at a writable directory or set "
                   "FARMEM_STATS_DIR=off\n", dir, err.c_str());
      return 2;
    }
    const char* m = getenv("FARMEM_METRICS");
    if (m && *m) {
      try {
        prom = std::make_unique<metrics::Server>(m, [&account, n, started_ns] {
          live::Reading rd;
          rd.h.kind = live::kKindServer;
          rd.h.started_ns = started_ns;
          fill_snapshot(rd.s, n, account);
          return live::prometheus(rd);
        });
      } catch (const Error& e) {
        std::fprintf(stderr, "farmem-server: %s\n", e.what());
        return 2;
      }
      prom->start();
    }
    if (pub) {
      pub->next().set_info(server_info(listeners, token, prom ? m : nullptr));
      fill_snapshot(pub->next(), n, account);
      pub->publish();
    }
  }
  StartGate gate(n, account, token);
  std::vector<std::unique_ptr<Control>> controls;
  for (std::size_t i = 0; i < n; ++i) controls.push_back(std::make_unique<Control>(gate));
  std::vector<int> status(n, 0);
  std::vector<std::thread> threads;
  for (std::size_t i = 0; i < n; ++i) {
    threads.emplace_back([&, i] {
      ListenerContext ctx{account, token, several, *controls[i]};
      try {
        status[i] = listeners[i].run(ctx);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "farmem-server: --listen %s: %s\n", listeners[i].uri.c_str(), e.what());
        status[i] = 1;
      }
      std::uint64_t one = 1;
      (void)!write(ended, &one, sizeof one);
    });
  }

  auto usage_all = [&] {
    for (auto& c : controls) c->ask_usage();
    if (several) print_server_usage("usage", n, account);
  };
  const std::uint64_t interval_ms = std::uint64_t{stats_interval_s} * 1000;
  std::uint64_t next_stats = now_ms() + interval_ms;
  const int publish_ms = static_cast<int>(live::kPeriodNs / 1000000);
  for (bool stop = false; !stop;) {
    int timeout = pub ? publish_ms : -1;
    if (interval_ms) {
      std::uint64_t now = now_ms();
      int until = next_stats > now ? static_cast<int>(next_stats - now) : 0;
      timeout = timeout < 0 ? until : std::min(timeout, until);
    }
    pollfd p[2] = {{sfd, POLLIN, 0}, {ended, POLLIN, 0}};
    int r = poll(p, 2, timeout);
    if (r < 0 && errno != EINTR) {
      std::perror("farmem-server: poll");
      break;
    }
    if (r > 0 && (p[0].revents & POLLIN)) {
      signalfd_siginfo si;
      while (read(sfd, &si, sizeof si) == sizeof si) {
        if (si.ssi_signo == SIGUSR1) usage_all();
        else if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT) stop = true;
      }
    }
    if (r > 0 && (p[1].revents & POLLIN)) stop = true;  // a listener ended by itself (it said why)
    if (interval_ms && now_ms() >= next_stats) {
      usage_all();
      next_stats = now_ms() + interval_ms;
    }
    if (pub) {
      fill_snapshot(pub->next(), n, account);
      pub->publish();
    }
  }
  prom.reset();
  if (pub) pub->remove();
  gate.abort();
  for (auto& c : controls) c->ask_stop();
  for (auto& t : threads) t.join();
  if (several && gate.opened()) print_server_usage("exit", n, account);
  close(sfd);
  close(ended);
  for (int s : status)
    if (s != 0) return s;
  return 0;
}

}  // namespace farmem::server
