// FARMEM_METRICS=HOST:PORT: a small HTTP endpoint, one thread, that answers
// GET /metrics with the process's counters in the Prometheus text format
// (live::prometheus) and 404 to anything else. Used by the runtime and by
// farmem-server.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <thread>

namespace farmem::metrics {

struct Address {
  std::string host;
  unsigned port = 0;
};
// "HOST:PORT" or "[V6]:PORT", PORT 1-65535; throws Error naming FARMEM_METRICS and the fix.
Address parse(const std::string& text);

class Server {
 public:
  // Binds now (throws Error: address not usable, port in use); start() serves on a thread of its own.
  Server(const std::string& text, std::function<std::string()> render);
  ~Server();  // stops the thread
  void start();
  // fork(): the child has no serving thread; drop its handle and the child's copy of the socket.
  void forget_in_child();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;
  const std::string& address() const { return text_; }

 private:
  void loop();
  void answer(int fd);
  std::string text_;
  std::function<std::string()> render_;
  int lfd_ = -1, stop_fd_ = -1;
  std::thread thread_;
};

// Checks that FARMEM_METRICS could be served (binds and lets go): for farmem-run,
// which reports a bad address before the program starts. Throws Error.
void check(const std::string& text);

}  // namespace farmem::metrics
