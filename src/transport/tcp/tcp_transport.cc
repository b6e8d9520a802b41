// The tcp:// and tcp+tls:// transport: far memory on a farmem-server across
// the network, in the clear or under TLS (stream.hpp). One TCP connection per
// core (queue pair), all attached to one server session;
// requests are pipelined (many pages in flight) and a batch of posts goes out
// in one writev. Replies land straight in their frames. A dead or silent
// server ends the process with a clear message (never a hang, never stale data),
// unless the transport is one server of a pool: then its queue pairs report
// every request as failed and the pool reads and writes elsewhere.
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <deque>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "farmem/runtime.hpp"
#include "transport/queue_pair.hpp"
#include "transport/tcp/stream.hpp"
#include "transport/tcp/tcp_transport.hpp"
#include "transport/auth.hpp"
#include "transport/wire.hpp"
#include "runtime/fatal.hpp"
#include "runtime/os.hpp"

namespace farmem::net {
namespace {

constexpr int kConnectTimeoutMs = 5000;
constexpr std::uint64_t kSilenceLimitNs = 10ull * 1000 * 1000 * 1000;

using detail::now_ns;

struct Endpoint {
  std::string host, port, uri;
  bool tls;  // tcp+tls://
};

Endpoint parse_uri(const std::string& uri) {
  const bool tls = uri.rfind("tcp+tls://", 0) == 0;
  const std::string prefix = tls ? "tcp+tls://" : "tcp://";
  const std::string form = prefix + "HOST:PORT";
  if (uri.rfind(prefix, 0) != 0) throw Error("FARMEM_BACKEND=" + uri + " is not " + form);
  std::string rest = uri.substr(prefix.size());
  std::size_t colon = rest.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == rest.size())
    throw Error("FARMEM_BACKEND=" + uri + " is not " + form);
  std::string host = rest.substr(0, colon), port = rest.substr(colon + 1);
  if (host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  char* end = nullptr;
  long p = std::strtol(port.c_str(), &end, 10);
  if (*end || p < 1 || p > 65535) throw Error("FARMEM_BACKEND=" + uri + ": port must be 1-65535");
  return {host, port, uri, tls};
}

// Connects with a timeout, then starts TLS when the URI asks for it (tls:
// the transport's context). Returns the connection or throws Error.
std::unique_ptr<tcp::Stream> dial(const Endpoint& ep, const tcp::TlsContext* tls) {
  addrinfo hints{}, *res = nullptr;
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  int rc = getaddrinfo(ep.host.c_str(), ep.port.c_str(), &hints, &res);
  if (rc != 0) throw Error("cannot resolve the memory server " + ep.uri + ": " + gai_strerror(rc));
  std::string why = "no address";
  for (addrinfo* a = res; a; a = a->ai_next) {
    int fd = socket(a->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) continue;
    int r = connect(fd, a->ai_addr, a->ai_addrlen);
    if (r != 0 && errno == EINPROGRESS) {
      pollfd p{fd, POLLOUT, 0};
      r = ::poll(&p, 1, kConnectTimeoutMs);
      int err = 0;
      socklen_t el = sizeof err;
      if (r == 1) getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el);
      if (r == 1 && err == 0) r = 0;
      else {
        why = r == 0 ? "timed out" : detail::errno_text(err ? err : errno);
        r = -1;
      }
    } else if (r != 0) {
      why = detail::errno_text(errno);
    }
    if (r == 0) {
      freeaddrinfo(res);
      int one = 1;
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      auto s = std::make_unique<tcp::Stream>(fd);
      if (tls) s->start_tls_client(*tls, ep.host, ep.uri, kConnectTimeoutMs);
      return s;
    }
    close(fd);
  }
  freeaddrinfo(res);
  throw Error("cannot connect to the memory server " + ep.uri + ": " + why + "; start farmem-server --listen " +
              (ep.tls ? "tcp+tls://HOST:PORT --tls-cert FILE --tls-key FILE" : ep.uri) + " or fix FARMEM_BACKEND");
}

// One handshake message from the server: its header, and its payload into
// `payload` (at most `max` bytes). Throws the server's refusal as one line.
wire::Header handshake_reply(tcp::Stream& s, const Endpoint& ep, void* payload, std::size_t max) {
  wire::Header r{};
  if (!s.read_full(&r, sizeof r, 5000))
    throw Error("the memory server " + ep.uri + " did not answer the handshake within 5 s; is it a farmem-server?");
  if (r.magic == wire::kMagic && r.version != wire::kVersion)
    throw Error("the memory server " + ep.uri + " refused us: " + wire::version_refusal(r.version, "server"));
  std::string why;
  if (wire::validate(r, true, &why) != wire::Errc::Ok)
    throw Error("the memory server " + ep.uri + " sent a malformed handshake (" + why + ")");
  if (static_cast<wire::Op>(r.op) == wire::Op::Error) {
    std::string msg(r.length, '\0');
    s.read_full(msg.data(), msg.size(), 5000);
    auto e = static_cast<wire::Errc>(r.status);
    if (e == wire::Errc::BadToken)
      throw Error("the memory server " + ep.uri + " refused us: " + msg +
                  "; set FARMEM_TOKEN_FILE to the server's token file");
    throw Error("the memory server " + ep.uri + " refused us: " + msg);
  }
  if (r.length != max || !s.read_full(payload, max, 5000))
    throw Error("the memory server " + ep.uri + " sent a malformed handshake (unexpected payload)");
  return r;
}

// HELLO on a fresh connection, then the token's challenge and response
// (transport/auth.hpp): the token is proven, never sent, and the server proves
// it holds it too. Returns the reply (id = session, offset = capacity).
wire::Header hello(tcp::Stream& s, const Endpoint& ep, const std::string& token, std::uint64_t capacity,
                   std::uint64_t attach_session) {
  wire::Header h = wire::make(wire::Op::Hello, attach_session, capacity, attach_session ? 1 : 0, 0);
  iovec hi{&h, sizeof h};
  if (!s.write_full(&hi, 1, 5000))
    throw Error("the memory server " + ep.uri + " closed the connection during the handshake");
  unsigned char server_nonce[auth::kNonce], proof[auth::kNonce + auth::kMac], server_proof[auth::kMac];
  wire::Header c = handshake_reply(s, ep, server_nonce, sizeof server_nonce);
  if (static_cast<wire::Op>(c.op) != wire::Op::Challenge)
    throw Error("the memory server " + ep.uri + " sent a malformed handshake (no challenge)");
  if (!token.empty() && c.size == 1)
    throw Error(auth::no_token_refusal(ep.uri));
  auth::random_nonce(proof);
  auth::prove(token, true, server_nonce, proof, proof + auth::kNonce);
  wire::Header p = wire::make(wire::Op::Prove, attach_session, 0, 0, sizeof proof);
  iovec iov[2] = {{&p, sizeof p}, {proof, sizeof proof}};
  if (!s.write_full(iov, 2, 5000))
    throw Error("the memory server " + ep.uri + " closed the connection during the handshake");
  wire::Header r = handshake_reply(s, ep, server_proof, sizeof server_proof);
  if (static_cast<wire::Op>(r.op) != wire::Op::Reply)
    throw Error("the memory server " + ep.uri + " sent a malformed handshake (no reply to our proof)");
  if (!token.empty() && !auth::check(token, false, server_nonce, proof, server_proof))
    throw Error(auth::unproven_refusal(ep.uri));
  return r;
}

class TcpQueuePair final : public QueuePair {
 public:
  // survive: a pool member (fails requests instead of ending the process);
  // no stream: a member whose server could not be reached, failed from the start.
  TcpQueuePair(std::unique_ptr<tcp::Stream> s, std::string uri, bool survive, std::uint64_t silence_ns)
      : s_(std::move(s)), uri_(std::move(uri)), survive_(survive), silence_ns_(silence_ns), dead_(!s_) {}

  void post_read(std::uint64_t off, void* local, std::size_t len, std::uint64_t cookie) override {
    if (dead_) return fail_now(cookie);
    std::uint64_t id = next_id_++;
    pending_[id] = {static_cast<char*>(local), len, cookie};
    queue_header(wire::make(wire::Op::Read, id, off, static_cast<std::uint32_t>(len), 0));
  }
  void post_write(std::uint64_t off, const void* local, std::size_t len, std::uint64_t cookie) override {
    if (dead_) return fail_now(cookie);
    std::uint64_t id = next_id_++;
    pending_[id] = {nullptr, 0, cookie};
    queue_header(wire::make(wire::Op::Write, id, off, static_cast<std::uint32_t>(len), static_cast<std::uint32_t>(len)));
    out_.push_back({const_cast<void*>(local), len});
  }
  void submit() override {
    // Send everything; while the socket is full, keep reading replies so the
    // server never blocks on us (and we never deadlock with it). Under TLS the
    // last bytes taken may still be buffered: they are pushed out too.
    std::size_t i = 0;
    while (!dead_ && (i < out_.size() || s_->unsent())) {
      ssize_t n = i < out_.size() ? s_->send(&out_[i], static_cast<int>(std::min<std::size_t>(out_.size() - i, 512)))
                                  : (s_->flush() ? 0 : -1);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno != EAGAIN) {
          dead(s_->error());
          break;
        }
        receive();
        if (dead_) break;
        pollfd p{s_->fd(), POLLOUT | POLLIN, 0};
        if (!s_->buffered()) ::poll(&p, 1, 100);
        check_silence();
        continue;
      }
      progress_ns_ = now_ns();
      std::size_t left = static_cast<std::size_t>(n);
      while (left && left >= out_[i].iov_len) left -= out_[i++].iov_len;
      if (left) {
        out_[i].iov_base = static_cast<char*>(out_[i].iov_base) + left;
        out_[i].iov_len -= left;
      }
    }
    out_.clear();
    headers_.clear();
  }
  std::size_t poll(Completion* out, std::size_t max) override {
    if (done_.empty() && !dead_) {
      receive();
      if (done_.empty() && !pending_.empty()) check_silence();
    }
    return take_completions(done_, out, max);
  }

  void wait(unsigned timeout_us) override {
    if (pending_.empty() || dead_) return;
    if (s_->buffered()) return;
    pollfd p{s_->fd(), POLLIN, 0};
    timespec ts{0, static_cast<long>(timeout_us) * 1000};
    ppoll(&p, 1, &ts, nullptr);
  }

 private:
  struct Pending {
    char* dst;
    std::size_t len;
    std::uint64_t cookie;
  };

  void queue_header(const wire::Header& h) {
    headers_.push_back(h);
    // headers_ is a deque: element addresses stay valid while we append.
    out_.push_back({&headers_.back(), sizeof(wire::Header)});
    if (pending_.size() == 1) progress_ns_ = now_ns();
  }

  void fail_now(std::uint64_t cookie) { done_.push_back({cookie, true}); }

  // The server is gone. Alone, that ends the process; in a pool, every request
  // in flight and every later one completes as failed.
  void dead(const std::string& why) {
    if (!survive_)
      detail::fatal("lost the memory server %s (%s); far memory is gone: restart the application "
                    "when the server is back",
                    uri_.c_str(), why.c_str());
    if (dead_) return;
    dead_ = true;
    for (auto& [id, p] : pending_) fail_now(p.cookie);
    pending_.clear();
    out_.clear();
    headers_.clear();
    s_.reset();
  }

  void check_silence() {
    if (now_ns() - progress_ns_ <= silence_ns_) return;
    if (!survive_)
      detail::fatal("the memory server %s has not answered for %llu s; giving up", uri_.c_str(),
                    static_cast<unsigned long long>(silence_ns_ / 1000000000ull));
    dead("no answer for " + std::to_string(silence_ns_ / 1000000) + " ms");
  }

  // Reads whatever has arrived; completes requests whose replies are whole.
  void receive() {
    for (;;) {
      ssize_t n;
      if (hdr_got_ < sizeof hdr_) {
        n = s_->recv(reinterpret_cast<char*>(&hdr_) + hdr_got_, sizeof hdr_ - hdr_got_);
      } else {
        n = s_->recv(cur_.dst + body_got_, cur_.len - body_got_);
      }
      if (n == 0) return dead("connection closed by the server");
      if (n < 0) {
        if (errno == EAGAIN || errno == EINTR) return;
        return dead(s_->error());
      }
      progress_ns_ = now_ns();
      if (hdr_got_ < sizeof hdr_) {
        hdr_got_ += static_cast<std::size_t>(n);
        if (hdr_got_ < sizeof hdr_) continue;
        if (!on_header()) return;
      } else {
        body_got_ += static_cast<std::size_t>(n);
      }
      if (hdr_got_ == sizeof hdr_ && body_got_ == cur_.len) {
        done_.push_back({cur_.cookie});
        hdr_got_ = 0;
        body_got_ = 0;
      }
    }
  }

  // False when the reply killed the connection.
  bool on_header() {
    std::string why;
    if (wire::validate(hdr_, true, &why) != wire::Errc::Ok) return dead("malformed reply: " + why), false;
    if (static_cast<wire::Op>(hdr_.op) == wire::Op::Error) {
      std::string msg(hdr_.length, '\0');
      s_->read_full(msg.data(), msg.size(), 2000);
      // A full server is not a failed one: in a pool its pages could not go
      // anywhere else either (placement is fixed), so far memory is full.
      if (static_cast<wire::Errc>(hdr_.status) == wire::Errc::NoCapacity)
        detail::fatal("far memory is full: the memory server %s refused a page: %s", uri_.c_str(), msg.c_str());
      return dead("the server said: " + msg), false;
    }
    auto it = pending_.find(hdr_.id);
    if (it == pending_.end()) return dead("reply to a request we did not send"), false;
    cur_ = it->second;
    pending_.erase(it);
    if (hdr_.length != cur_.len) {
      pending_[hdr_.id] = cur_;  // failed with the rest
      return dead("reply of the wrong size"), false;
    }
    body_got_ = 0;
    return true;
  }

  std::unique_ptr<tcp::Stream> s_;
  std::string uri_;
  bool survive_;
  std::uint64_t silence_ns_;
  bool dead_;
  std::uint64_t next_id_ = 1;
  std::unordered_map<std::uint64_t, Pending> pending_;
  std::deque<wire::Header> headers_;
  std::vector<iovec> out_;
  std::deque<Completion> done_;
  wire::Header hdr_{};
  std::size_t hdr_got_ = 0, body_got_ = 0;
  Pending cur_{nullptr, 0, 0};
  std::uint64_t progress_ns_ = 0;
};

class TcpTransport final : public Transport {
 public:
  TcpTransport(const Config& cfg, const MemberOptions* member)
      : ep_(parse_uri(member ? member->uri : cfg.backend)),
        token_(wire::read_client_token(cfg.token_file, wire::kMaxToken)),
        survive_(member != nullptr),
        silence_ns_(member ? member->timeout_ns
                           : cfg.server_timeout_ms ? cfg.server_timeout_ms * 1000000ull : kSilenceLimitNs) {
    if (ep_.tls) tls_ = tcp::TlsContext::client(cfg.tls_ca);
    ctl_ = dial(ep_, tls_.get());
    wire::Header r = hello(*ctl_, ep_, token_, member ? member->capacity : cfg.far_mem_bytes, 0);
    session_ = r.id;
    capacity_ = r.offset;
  }
  ~TcpTransport() override { shutdown(); }

  std::unique_ptr<QueuePair> create_qp() override {
    // Runs on any thread that starts using far memory: never throw from here.
    std::unique_ptr<tcp::Stream> s;
    try {
      s = dial(ep_, tls_.get());
      hello(*s, ep_, token_, capacity_, session_);
    } catch (const Error& e) {
      s.reset();
      if (!survive_)
        detail::fatal("lost the memory server %s (a new core could not attach: %s)", ep_.uri.c_str(), e.what());
      // No stream: a queue pair that fails everything, and the pool goes elsewhere.
    }
    return std::make_unique<TcpQueuePair>(std::move(s), ep_.uri, survive_, silence_ns_);
  }
  void discard(std::uint64_t off, std::uint64_t len) override {
    std::lock_guard<std::mutex> g(mu_);
    for (std::uint64_t done = 0; done < len && ctl_;) {
      std::uint64_t n = std::min<std::uint64_t>(len - done, 1ull << 30) & ~std::uint64_t{wire::kUnit - 1};
      if (n == 0) break;
      request(wire::make(wire::Op::Discard, 0, off + done, static_cast<std::uint32_t>(n), 0));
      done += n;
    }
  }
  std::uint64_t remote_usage() override {
    std::lock_guard<std::mutex> g(mu_);
    if (!ctl_) return 0;
    return request(wire::make(wire::Op::Usage, 0, 0, 0, 0)).offset;
  }
  void shutdown() override {
    std::lock_guard<std::mutex> g(mu_);
    ctl_.reset();
  }
  std::string describe() const override { return ep_.uri; }

 private:
  // A pool member whose control connection broke answers 0 from then on.
  wire::Header request(const wire::Header& h) {
    wire::Header r{};
    const int timeout_ms = static_cast<int>(silence_ns_ / 1000000);
    iovec hi{const_cast<wire::Header*>(&h), sizeof h};
    if (!ctl_->write_full(&hi, 1, timeout_ms) || !ctl_->read_full(&r, sizeof r, timeout_ms)) {
      if (!survive_)
        detail::fatal("lost the memory server %s (control connection: %s)", ep_.uri.c_str(), ctl_->error().c_str());
      ctl_.reset();
      return r;
    }
    if (static_cast<wire::Op>(r.op) == wire::Op::Error) {
      std::string msg(r.length, '\0');
      ctl_->read_full(msg.data(), msg.size(), 2000);
      detail::fatal("the memory server %s refused a request: %s", ep_.uri.c_str(), msg.c_str());
    }
    return r;
  }

  Endpoint ep_;
  std::string token_;
  bool survive_;
  std::uint64_t silence_ns_;
  std::shared_ptr<tcp::TlsContext> tls_;  // tcp+tls:// only
  std::unique_ptr<tcp::Stream> ctl_;       // the control connection (discards, usage)
  std::uint64_t session_ = 0, capacity_ = 0;
  std::mutex mu_;
};

}  // namespace

std::unique_ptr<Transport> connect_tcp(const Config& cfg) { return std::make_unique<TcpTransport>(cfg, nullptr); }

std::unique_ptr<Transport> connect_tcp_member(const Config& cfg, const MemberOptions& member) {
  return std::make_unique<TcpTransport>(cfg, &member);
}

}  // namespace farmem::net
