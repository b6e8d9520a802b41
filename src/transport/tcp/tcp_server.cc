// The networked memory server (tcp://, and tcp+tls:// through stream.hpp): one
// epoll loop serving many clients.
// A client session is a far region of its own (mapped on HELLO, unmapped when
// its last connection closes); a runtime opens one connection per core and
// attaches them all to its session. Every message is validated before use; a
// malformed one gets an Error reply and the connection is closed. The main
// thread (listener.cc) asks it through its Control to print a usage line or to
// stop; its sessions' memory is leased from the server-wide CapacityAccount
// as they write (session_memory.hpp).
#include "transport/tcp/tcp_server.hpp"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "server/session_memory.hpp"
#include "transport/auth.hpp"
#include "transport/wire.hpp"

namespace farmem::server {
namespace {

namespace wire = net::wire;
namespace auth = net::auth;

struct Session {
  std::uint64_t id = 0;
  std::unique_ptr<SessionMemory> mem;
  int conns = 0;
};

struct Conn {
  int fd = -1;
  std::unique_ptr<net::tcp::Stream> stream;  // owns fd
  bool first_byte_seen = false;              // tcp+tls://: a plain client was looked for
  std::string peer;
  std::vector<char> in;
  std::size_t in_used = 0;
  std::vector<char> out;
  std::size_t out_sent = 0;
  Session* session = nullptr;
  bool closing = false;  // flush, then close
  bool challenged = false;  // a Hello was answered with a Challenge; the Prove comes next
  wire::Header hello{};     // that Hello
  unsigned char nonce[auth::kNonce] = {};  // and the nonce it was sent
};

class Server {
 public:
  Server(const TcpServerOptions& o, ListenerContext& ctx) : opt_(o), ctx_(ctx) {}
  int run();

 private:
  bool start_listening();
  void accept_all();
  void on_readable(Conn& c);
  bool refuse_plain_client(Conn& c);
  bool handle(Conn& c, const wire::Header& h, const char* payload);
  void reply(Conn& c, const wire::Header& h, const void* data = nullptr, std::size_t len = 0);
  void fail(Conn& c, std::uint64_t id, wire::Errc e, const std::string& msg);
  void flush(Conn& c);
  void close_conn(int fd);
  void print_usage(const char* why);

  TcpServerOptions opt_;
  ListenerContext& ctx_;
  std::string uri_;  // tcp://HOST:PORT with the port actually bound
  int lfd_ = -1, ep_ = -1;
  std::map<int, std::unique_ptr<Conn>> conns_;
  std::map<std::uint64_t, std::unique_ptr<Session>> sessions_;
};

// ADDRESS:PORT ([V6]:PORT) of an accepted connection: how the server's statistics name a client.
std::string peer_name(const sockaddr_storage& ss) {
  char host[NI_MAXHOST], port[NI_MAXSERV];
  if (getnameinfo(reinterpret_cast<const sockaddr*>(&ss), sizeof ss, host, sizeof host, port, sizeof port,
                  NI_NUMERICHOST | NI_NUMERICSERV) != 0)
    return "?";
  std::string name;
  const bool v6 = std::strchr(host, ':') != nullptr;
  if (v6) name += '[';
  name += host;
  if (v6) name += ']';
  name += ':';
  name += port;
  return name;
}

bool Server::start_listening() {
  const char* scheme = opt_.tls ? "tcp+tls" : "tcp";
  addrinfo hints{}, *res = nullptr;
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  std::string port = std::to_string(opt_.port);
  int rc = getaddrinfo(opt_.host.c_str(), port.c_str(), &hints, &res);
  if (rc != 0) {
    std::fprintf(stderr, "farmem-server: cannot listen on %s://%s:%u: cannot resolve %s: %s\n",
                 scheme, opt_.host.c_str(), opt_.port, opt_.host.c_str(), gai_strerror(rc));
    return false;
  }
  lfd_ = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(lfd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (lfd_ < 0 || bind(lfd_, res->ai_addr, res->ai_addrlen) != 0 || listen(lfd_, 128) != 0) {
    std::fprintf(stderr, "farmem-server: cannot listen on %s://%s:%u: %s\n", scheme, opt_.host.c_str(), opt_.port,
                 std::strerror(errno));
    freeaddrinfo(res);
    return false;
  }
  freeaddrinfo(res);
  sockaddr_storage ss{};
  socklen_t sl = sizeof ss;
  getsockname(lfd_, reinterpret_cast<sockaddr*>(&ss), &sl);
  unsigned actual = ntohs(ss.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port
                                                    : reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
  uri_ = host_port_uri(scheme, opt_.host, actual);
  std::printf("farmem-server: listening on %s://%s:%u, capacity %llu MiB, token %s\n", scheme, opt_.host.c_str(),
              actual, static_cast<unsigned long long>(ctx_.account.capacity() >> 20),
              ctx_.token.empty() ? "not required" : "required");
  std::fflush(stdout);
  return true;
}

void Server::print_usage(const char* why) {
  std::uint64_t used = 0;  // a session's lease is what it holds: granted_bytes is the same
  for (auto& [id, s] : sessions_) {
    used += s->mem->used_bytes();
  }
  std::printf("%s,\"clients\":%zu,\"connections\":%zu,\"used_bytes\":%llu,"
              "\"granted_bytes\":%llu,\"capacity_bytes\":%llu}\n",
              usage_head(why, nullptr, ctx_, uri_).c_str(), sessions_.size(), conns_.size(),
              static_cast<unsigned long long>(used), static_cast<unsigned long long>(used),
              static_cast<unsigned long long>(ctx_.account.capacity()));
  std::fflush(stdout);
}

void Server::accept_all() {
  for (;;) {
    sockaddr_storage ss{};
    socklen_t sl = sizeof ss;
    int fd = accept4(lfd_, reinterpret_cast<sockaddr*>(&ss), &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) return;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    auto c = std::make_unique<Conn>();
    c->fd = fd;
    c->stream = std::make_unique<net::tcp::Stream>(fd);
    if (opt_.tls && !c->stream->start_tls_server(*opt_.tls)) continue;  // no memory for TLS: closed, never plain
    c->peer = peer_name(ss);
    c->in.resize(64 * 1024);
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLRDHUP;
    ev.data.fd = fd;
    epoll_ctl(ep_, EPOLL_CTL_ADD, fd, &ev);
    conns_[fd] = std::move(c);
  }
}

// Pieces of pages (a pool's erasure coding) are smaller than a page: a write
// marks every page it touches, a discard clears only the pages it covers whole.
void Server::reply(Conn& c, const wire::Header& h, const void* data, std::size_t len) {
  const char* hp = reinterpret_cast<const char*>(&h);
  c.out.insert(c.out.end(), hp, hp + sizeof h);
  if (len) c.out.insert(c.out.end(), static_cast<const char*>(data), static_cast<const char*>(data) + len);
}

void Server::fail(Conn& c, std::uint64_t id, wire::Errc e, const std::string& msg) {
  reply(c, wire::make(wire::Op::Error, id, 0, 0, static_cast<std::uint32_t>(msg.size()),
                      static_cast<std::uint32_t>(e)),
        msg.data(), msg.size());
  c.closing = true;
}

// Returns false when the connection must stop reading (it is closing).
bool Server::handle(Conn& c, const wire::Header& h, const char* payload) {
  const auto op = static_cast<wire::Op>(h.op);
  if (op == wire::Op::Hello) {  // answered with a challenge: the token is proven, never sent
    if (c.session || c.challenged) {
      fail(c, h.id, wire::Errc::BadMessage, "hello twice on one connection");
      return false;
    }
    c.hello = h;
    c.challenged = true;
    auth::random_nonce(c.nonce);
    // size 1: this server requires no token, so it can prove none (the
    // client that holds one refuses it with a line that says so).
    reply(c, wire::make(wire::Op::Challenge, h.id, 0, ctx_.token.empty() ? 1 : 0, auth::kNonce), c.nonce,
          auth::kNonce);
    return true;
  }
  if (op == wire::Op::Prove) {
    if (!c.challenged || c.session) {
      fail(c, h.id, wire::Errc::BadMessage, "a proof without a hello");
      return false;
    }
    const auto* client_nonce = reinterpret_cast<const unsigned char*>(payload);
    if (!ctx_.token.empty() && !auth::check(ctx_.token, true, c.nonce, client_nonce, client_nonce + auth::kNonce)) {
      fail(c, h.id, wire::Errc::BadToken, "wrong or missing token");
      return false;
    }
    unsigned char proof[auth::kMac];
    auth::prove(ctx_.token, false, c.nonce, client_nonce, proof);
    const wire::Header& hh = c.hello;
    if (hh.size == 1) {  // attach another connection to an existing session
      auto it = sessions_.find(hh.id);
      if (it == sessions_.end()) {
        fail(c, h.id, wire::Errc::NoSession, "no such session");
        return false;
      }
      c.session = it->second.get();
    } else {
      std::string refusal;
      auto mem = SessionMemory::map(ctx_.account, hh.offset, c.peer, &refusal);
      if (!mem) {
        fail(c, h.id, wire::Errc::NoCapacity, refusal);
        return false;
      }
      auto s = std::make_unique<Session>();
      do getrandom(&s->id, sizeof s->id, 0); while (s->id == 0 || sessions_.count(s->id));
      s->mem = std::move(mem);
      c.session = s.get();
      sessions_[s->id] = std::move(s);
    }
    ++c.session->conns;
    reply(c, wire::make(wire::Op::Reply, c.session->id, c.session->mem->size(), 0, auth::kMac), proof, auth::kMac);
    return true;
  }
  if (!c.session) {
    fail(c, h.id, wire::Errc::BadMessage, "hello first");
    return false;
  }
  SessionMemory& s = *c.session->mem;
  std::uint64_t size = h.size;
  if (op != wire::Op::Usage && !s.in_range(h.offset, size)) {
    fail(c, h.id, wire::Errc::OutOfRange, "range outside the session's far memory");
    return false;
  }
  switch (op) {
    case wire::Op::Read:
      reply(c, wire::make(wire::Op::Reply, h.id, h.offset, h.size, h.size), s.base() + h.offset, size);
      s.note_read(size);
      break;
    case wire::Op::Write: {
      std::string full;
      if (!s.charge_write(h.offset, size, &full)) {
        fail(c, h.id, wire::Errc::NoCapacity, full);
        return false;
      }
      std::memcpy(s.base() + h.offset, payload, size);
      reply(c, wire::make(wire::Op::Reply, h.id, h.offset, h.size, 0));
      break;
    }
    case wire::Op::Discard:
      s.discard(h.offset, size);
      reply(c, wire::make(wire::Op::Reply, h.id, h.offset, h.size, 0));
      break;
    case wire::Op::Usage:
      reply(c, wire::make(wire::Op::Reply, h.id, s.used_bytes(), 0, 0));
      break;
    default:
      fail(c, h.id, wire::Errc::BadMessage, "unexpected op");
      return false;
  }
  return true;
}

// tcp+tls://: a client that starts in the clear (its first byte is not a TLS
// handshake record's) is told so in the clear, in its own protocol, and closed.
bool Server::refuse_plain_client(Conn& c) {
  c.first_byte_seen = true;
  unsigned char b = 0;
  if (recv(c.fd, &b, 1, MSG_PEEK) != 1 || b == 0x16) return false;
  const std::string msg = "this server speaks TLS: connect to " + uri_ + " (FARMEM_BACKEND=" + uri_ +
                          ", FARMEM_TLS_CA naming the CA of its certificate)";
  wire::Header r = wire::make(wire::Op::Error, 0, 0, 0, static_cast<std::uint32_t>(msg.size()),
                              static_cast<std::uint32_t>(wire::Errc::BadMessage));
  iovec iov[2] = {{&r, sizeof r}, {const_cast<char*>(msg.data()), msg.size()}};
  msghdr m{};
  m.msg_iov = iov;
  m.msg_iovlen = 2;
  sendmsg(c.fd, &m, MSG_NOSIGNAL | MSG_DONTWAIT);
  close_conn(c.fd);
  return true;
}

void Server::on_readable(Conn& c) {
  if (opt_.tls && !c.first_byte_seen && refuse_plain_client(c)) return;
  for (;;) {
    if (c.in.size() - c.in_used < 64 * 1024) c.in.resize(c.in.size() * 2);
    ssize_t n = c.stream->recv(c.in.data() + c.in_used, c.in.size() - c.in_used);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
      close_conn(c.fd);
      return;
    }
    if (n < 0) break;
    c.in_used += static_cast<std::size_t>(n);
    if (c.out.size() > (8u << 20)) break;  // back-pressure: a slow reader
  }
  std::size_t pos = 0;
  while (!c.closing && c.in_used - pos >= sizeof(wire::Header)) {
    wire::Header h;
    std::memcpy(&h, c.in.data() + pos, sizeof h);
    std::string why;
    if (wire::Errc e = wire::validate(h, false, &why); e == wire::Errc::Version && h.magic == wire::kMagic) {
      // Said in the peer's own version, so an older client can print it.
      const std::string msg = wire::version_refusal(h.version, "client");
      wire::Header r = wire::make(wire::Op::Error, h.id, 0, 0, static_cast<std::uint32_t>(msg.size()),
                                  static_cast<std::uint32_t>(e));
      r.version = h.version;
      reply(c, r, msg.data(), msg.size());
      c.closing = true;
      break;
    } else if (e != wire::Errc::Ok) {
      fail(c, h.id, e, "malformed message: " + why);
      break;
    }
    if (c.in_used - pos < sizeof h + h.length) break;  // payload not all here yet
    handle(c, h, c.in.data() + pos + sizeof h);
    pos += sizeof h + h.length;
  }
  std::memmove(c.in.data(), c.in.data() + pos, c.in_used - pos);
  c.in_used -= pos;
  if (c.in.size() > (4u << 20) && c.in_used < (1u << 20)) c.in.resize(c.in.size() / 2);
  flush(c);
}

void Server::flush(Conn& c) {
  net::tcp::Stream& s = *c.stream;
  while (c.out_sent < c.out.size() || s.unsent()) {
    iovec iov{c.out.data() + c.out_sent, c.out.size() - c.out_sent};
    ssize_t n = c.out_sent < c.out.size() ? s.send(&iov, 1) : (s.flush() ? 0 : -1);
    if (n < 0) {
      if (errno == EAGAIN) break;
      if (errno == EINTR) continue;
      close_conn(c.fd);
      return;
    }
    c.out_sent += static_cast<std::size_t>(n);
  }
  if (c.out_sent == c.out.size() && !s.unsent()) {
    c.out.clear();
    c.out_sent = 0;
    if (c.closing) {
      close_conn(c.fd);
      return;
    }
  }
  // TLS may hold decrypted requests that epoll cannot see (reading stopped for
  // back-pressure): serve them once the replies are out.
  if (c.out.empty() && s.buffered()) {
    on_readable(c);
    return;
  }
  const bool want_out = !c.out.empty() || s.unsent() || s.wants_write();
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLRDHUP | (want_out ? static_cast<unsigned>(EPOLLOUT) : 0u);
  ev.data.fd = c.fd;
  epoll_ctl(ep_, EPOLL_CTL_MOD, c.fd, &ev);
}

void Server::close_conn(int fd) {
  auto it = conns_.find(fd);
  if (it == conns_.end()) return;
  Session* s = it->second->session;
  epoll_ctl(ep_, EPOLL_CTL_DEL, fd, nullptr);
  conns_.erase(it);  // its stream closes fd
  if (s && --s->conns == 0) {  // last connection of a client: reclaim its memory
    sessions_.erase(s->id);
  }
}

int Server::run() {
  const bool listening = start_listening();
  if (!ctx_.control.started(listening)) {
    if (lfd_ >= 0) close(lfd_);
    return listening ? 0 : 1;
  }
  ep_ = epoll_create1(EPOLL_CLOEXEC);
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.fd = lfd_;
  epoll_ctl(ep_, EPOLL_CTL_ADD, lfd_, &ev);
  ev.data.fd = ctx_.control.fd();
  epoll_ctl(ep_, EPOLL_CTL_ADD, ctx_.control.fd(), &ev);
  epoll_event evs[64];
  for (;;) {
    int n = epoll_wait(ep_, evs, 64, -1);
    for (int i = 0; i < n; ++i) {
      int fd = evs[i].data.fd;
      if (fd == lfd_) {
        accept_all();
      } else if (fd == ctx_.control.fd()) {
        Control::Requests r = ctx_.control.take();
        if (r.usage) print_usage("usage");
        if (r.stop) {
          print_usage("exit");
          while (!conns_.empty()) close_conn(conns_.begin()->first);
          close(lfd_);
          close(ep_);
          return 0;
        }
      } else {
        auto it = conns_.find(fd);
        if (it == conns_.end()) continue;
        Conn& c = *it->second;
        if (evs[i].events & EPOLLOUT) {
          const bool handshake_step = c.stream->wants_write();  // a TLS read that waited to write
          flush(c);
          if (handshake_step && conns_.count(fd)) on_readable(c);
        }
        if (conns_.count(fd) && (evs[i].events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)))
          on_readable(c);
      }
    }
  }
}

}  // namespace

int run_tcp(const TcpServerOptions& opt, ListenerContext& ctx) {
  Server s(opt, ctx);
  return s.run();
}

}  // namespace farmem::server
