// How farmem-server runs its listeners -- one per --listen, each a transport's
// server loop (tcp_server.cc, rdma_server.cc, dpdk_server.cc) on a thread of
// its own -- and what they share: the capacity account, the token, and a
// Control through which the main thread, the only one that takes SIGTERM,
// SIGINT and SIGUSR1, asks a loop to print a usage line or to stop.
#pragma once
#include <atomic>
#include <functional>
#include <string>
#include <vector>

#include "server/capacity.hpp"

namespace farmem::server {

class StartGate;  // listener.cc: every listener starts, or none serves

// Requests from the main thread to one listener's loop.
class Control {
 public:
  explicit Control(StartGate& gate);
  ~Control();
  Control(const Control&) = delete;
  Control& operator=(const Control&) = delete;

  // The listener reports, once, that it listens (ok) or that it could not
  // start (it printed one line why on stderr), then waits for the others.
  // Returns true when all of them listen: serve. False: end without serving
  // (another listener failed, or the server is stopping).
  bool started(bool ok);

  // Readable (an eventfd) while a request is pending; loops that sleep in epoll watch it.
  int fd() const { return fd_; }
  struct Requests {
    bool usage = false;  // print a usage line (SIGUSR1, --stats-interval)
    bool stop = false;   // SIGTERM/SIGINT: close everything, print the exit line, return 0
  };
  // Takes the pending requests; cheap, so a polling loop may call it every round.
  Requests take();

  // From the main thread.
  void ask_usage();
  void ask_stop();

 private:
  void wake();
  StartGate& gate_;
  int fd_ = -1;
  std::atomic<bool> usage_{false}, stop_{false};
};

// What every listener gets from farmem-server.
struct ListenerContext {
  CapacityAccount& account;  // --capacity, shared by all listeners
  const std::string& token;  // empty: no token required
  bool several;              // more than one listener: usage lines say which one ("listener":URI)
  Control& control;
};

// The start of a listener's usage line: {"farmem_server":"WHY", then
// "transport":"T" when transport is not null, then "listener":"URI" when there
// are several listeners. With one listener the line is what it always was.
std::string usage_head(const char* why, const char* transport, const ListenerContext& ctx, const std::string& uri);

// SCHEME://HOST:PORT, HOST in [] when it is an IPv6 address: how a usage line names a bound listener.
std::string host_port_uri(const char* scheme, const std::string& host, unsigned port);

struct Listener {
  std::string uri;                           // as given to --listen
  std::function<int(ListenerContext&)> run;  // returns the exit status
};

// Blocks SIGTERM, SIGINT, SIGUSR1 and SIGPIPE (in every thread) and runs each
// listener on a thread of its own. SIGUSR1 and every stats_interval_s seconds
// (0: never) ask each listener for its usage line; with several listeners the
// main thread adds one line for the whole server ("listeners", "clients",
// "granted_bytes", "capacity_bytes"), also at exit. SIGTERM/SIGINT stop them
// all; the status is then 0. A listener that ends by itself (one that cannot
// start, say) stops the others and its status is returned.
int run_listeners(const std::vector<Listener>& listeners, CapacityAccount& account, const std::string& token,
                  unsigned stats_interval_s);

}  // namespace farmem::server
