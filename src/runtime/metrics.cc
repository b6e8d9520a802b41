// The metrics endpoint (metrics.hpp): parses FARMEM_METRICS, binds, and answers
// one connection at a time on its own thread. Under the preload shim this is a
// runtime thread: it allocates from ordinary memory (g_internal_alloc) and
// reads no locale (errno_text, no printf of numbers).
#include "runtime/metrics.hpp"

#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <new>

#include "farmem/runtime.hpp"
#include "runtime/os.hpp"
#include "runtime/runtime.hpp"

namespace farmem::metrics {

namespace {
constexpr const char* kFix = "use FARMEM_METRICS=HOST:PORT, e.g. 127.0.0.1:9464";

int bind_listener(const std::string& text) {
  Address a = parse(text);
  addrinfo hints{}, *res = nullptr;
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  const std::string port = std::to_string(a.port);
  if (int rc = getaddrinfo(a.host.c_str(), port.c_str(), &hints, &res); rc != 0)
    throw Error("FARMEM_METRICS=" + text + ": cannot resolve " + a.host + " (" + gai_strerror(rc) + "); " + kFix);
  int fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  if (fd >= 0) setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (fd < 0 || bind(fd, res->ai_addr, res->ai_addrlen) != 0 || listen(fd, 16) != 0) {
    const int e = errno;
    if (fd >= 0) close(fd);
    freeaddrinfo(res);
    throw Error("FARMEM_METRICS=" + text + ": cannot listen: " + detail::errno_text(e) +
                (e == EADDRINUSE ? "; pick a free port" : "; use an address of this machine") +
                " or unset FARMEM_METRICS");
  }
  freeaddrinfo(res);
  return fd;
}

bool write_all(int fd, const char* p, std::size_t n) {
  while (n > 0) {
    ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    p += w;
    n -= static_cast<std::size_t>(w);
  }
  return true;
}
}  // namespace

Address parse(const std::string& text) {
  const std::size_t colon = text.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == text.size())
    throw Error("FARMEM_METRICS=" + text + " is not HOST:PORT; " + kFix);
  Address a;
  a.host = text.substr(0, colon);
  if (a.host.size() > 2 && a.host.front() == '[' && a.host.back() == ']') a.host = a.host.substr(1, a.host.size() - 2);
  unsigned long port = 0;
  for (std::size_t i = colon + 1; i < text.size(); ++i) {
    if (text[i] < '0' || text[i] > '9' || port > 65535)
      throw Error("FARMEM_METRICS=" + text + ": the port is not a number from 1 to 65535; " + kFix);
    port = port * 10 + static_cast<unsigned>(text[i] - '0');
  }
  if (port == 0 || port > 65535)
    throw Error("FARMEM_METRICS=" + text + ": the port is not a number from 1 to 65535; " + kFix);
  a.port = static_cast<unsigned>(port);
  return a;
}

void check(const std::string& text) { close(bind_listener(text)); }

Server::Server(const std::string& text, std::function<std::string()> render)
    : text_(text), render_(std::move(render)) {
  lfd_ = bind_listener(text);
  stop_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
}

void Server::start() {
  thread_ = std::thread([this] { loop(); });
  pthread_setname_np(thread_.native_handle(), "farmem-metrics");
}

void Server::forget_in_child() {
  new (&thread_) std::thread();
  close(lfd_);
  lfd_ = -1;
}

Server::~Server() {
  if (thread_.joinable()) {
    std::uint64_t one = 1;
    if (write(stop_fd_, &one, sizeof one) < 0) {
    }
    thread_.join();
  }
  close(lfd_);
  close(stop_fd_);
}

void Server::loop() {
  detail::g_internal_alloc = 1;  // under the shim: never allocate from the transparent region
  for (;;) {
    pollfd p[2] = {{lfd_, POLLIN, 0}, {stop_fd_, POLLIN, 0}};
    if (poll(p, 2, -1) < 0 && errno != EINTR) return;
    if (p[1].revents) return;
    if (!(p[0].revents & POLLIN)) continue;
    int fd = accept4(lfd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) continue;
    answer(fd);
    close(fd);
  }
}

void Server::answer(int fd) {
  // The request line and headers; a client that sends nothing for 2 s is dropped.
  char buf[4096];
  std::size_t n = 0;
  while (n < sizeof buf - 1) {
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, 2000) <= 0) return;
    ssize_t r = recv(fd, buf + n, sizeof buf - 1 - n, 0);
    if (r <= 0) return;
    n += static_cast<std::size_t>(r);
    buf[n] = 0;
    if (std::strstr(buf, "\r\n\r\n") || std::strstr(buf, "\n\n")) break;
  }
  const bool head = std::strncmp(buf, "HEAD ", 5) == 0;
  const bool get = std::strncmp(buf, "GET ", 4) == 0 || head;
  const char* path = buf + (head ? 5 : 4);
  const bool metrics = get && (std::strncmp(path, "/metrics ", 9) == 0 || std::strncmp(path, "/metrics?", 9) == 0);
  std::string body, status;
  const char* type = "text/plain; charset=utf-8";
  if (metrics) {
    body = render_();
    status = "200 OK";
    type = "text/plain; version=0.0.4; charset=utf-8";
  } else if (!get) {
    status = "405 Method Not Allowed";
    body = "only GET /metrics\n";
  } else {
    status = "404 Not Found";
    body = "not found: farmem serves GET /metrics\n";
  }
  std::string resp = "HTTP/1.0 " + status + "\r\nContent-Type: " + type +
                     "\r\nContent-Length: " + std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n";
  if (!head) resp += body;
  write_all(fd, resp.data(), resp.size());
}

}  // namespace farmem::metrics
