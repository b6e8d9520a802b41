// The networked memory server over RDMA (rdma://): one event loop on the
// rdma_cm event channel, the completion channels and its Control (listener.cc:
// the main thread's usage and stop requests). A client's
// control connection creates its session: a region of its own, registered as
// its own memory region (own rkey) in a protection domain of its own, so no
// other client's queue pair can name it. Its per-core connections attach to
// that session and move pages with one-sided READ/WRITE; the server's CPU only
// sees connection events and control requests (discard, usage: wire headers
// over SEND/RECV). Every connection is two connects: the first is rejected with
// a challenge, the second carries the client's proof of the token in its
// private data and is accepted with the server's (rd::ConnectAuth); a wrong one
// is rejected with a reason (rdma_reject). The memory is
// deregistered and unmapped when the session's last connection goes.
#include "transport/rdma/rdma_server.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "runtime/os.hpp"
#include "transport/rdma/rdma_logic.hpp"
#include "transport/rdma/rdma_verbs.hpp"
#include "transport/wire.hpp"

namespace farmem::server {
namespace {

using farmem::detail::now_ns;
namespace wire = net::wire;
namespace rd = net::rdma;

constexpr int kCtlRecvs = 8;
constexpr std::size_t kCtlMsg = sizeof(wire::Header);

struct Device {
  ibv_context* ctx = nullptr;
  ibv_comp_channel* cc = nullptr;  // completions of the control connections on this device
  bool odp = false;
  int max_reads = 1;               // RDMA READs one queue pair may serve at once
};

struct Session {
  std::uint64_t id = 0;
  char* base = nullptr;
  std::uint64_t capacity = 0;
  Device* dev = nullptr;
  ibv_pd* pd = nullptr;  // the session's own protection domain
  ibv_mr* mr = nullptr;  // the session's own memory region (rkey)
  int conns = 0;
  std::shared_ptr<ClientUsage> usage;  // its row in the server's statistics (granted: its whole size)
};

struct Conn {
  rdma_cm_id* id = nullptr;
  Session* session = nullptr;
  bool control = false;
  ibv_cq* cq = nullptr;
  ibv_mr* buf_mr = nullptr;
  std::array<char, (kCtlRecvs + 1) * kCtlMsg> buf{};  // receive slots, then the send slot
};

class Server {
 public:
  Server(const RdmaServerOptions& o, ListenerContext& ctx)
      : opt_(o), ctx_(ctx), auth_(ctx.token) {}
  int run();

 private:
  bool start_listening();
  Device* device(ibv_context* ctx);
  void on_cm_event();
  void on_connect_request(rdma_cm_id* id, const std::vector<std::uint8_t>& pdata, int initiator_depth);
  Session* new_session(Device& dev, std::uint64_t want, std::string* why);
  void drop_session(Session* s);
  void reject(rdma_cm_id* id, wire::Errc code, const std::string& msg);
  void close_conn(rdma_cm_id* id);
  void on_completions(Device& dev);
  void on_control(Conn& c, int slot, std::uint32_t len);
  void send_reply(Conn& c, const wire::Header& h);
  void post_recv(Conn& c, int slot);
  std::uint64_t resident_bytes(const Session& s) const;
  void print_usage(const char* why);
  void stop_listening();

  RdmaServerOptions opt_;
  ListenerContext& ctx_;
  rd::ConnectAuth auth_;
  std::string uri_;  // rdma://HOST:PORT with the port actually bound
  int ep_ = -1;
  rdma_event_channel* ch_ = nullptr;
  rdma_cm_id* listen_ = nullptr;
  std::vector<std::unique_ptr<Device>> devices_;
  std::map<rdma_cm_id*, std::unique_ptr<Conn>> conns_;
  std::map<std::uint64_t, std::unique_ptr<Session>> sessions_;
};

void add_fd(int ep, int fd, std::uint64_t tag) {
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = tag;
  epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
}

// epoll tags: the cm channel, the Control, or a device (index + 2).
constexpr std::uint64_t kTagCm = 0, kTagControl = 1;

bool Server::start_listening() {
  const std::string uri = "rdma://" + opt_.host + ":" + std::to_string(opt_.port);
  if (std::string why = rd::no_device_reason(); !why.empty()) {
    std::fprintf(stderr, "farmem-server: --listen %s: %s; use --listen tcp://HOST:PORT or %s\n", uri.c_str(),
                 why.c_str(), rd::kSoftRoceHint);
    return false;
  }
  ch_ = rdma_create_event_channel();
  if (!ch_) {
    std::fprintf(stderr,
                 "farmem-server: --listen %s: cannot open the RDMA connection manager (/dev/infiniband/rdma_cm: "
                 "%s); load the rdma_ucm module or use --listen tcp://HOST:PORT\n",
                 uri.c_str(), std::strerror(errno));
    return false;
  }
  fcntl(ch_->fd, F_SETFL, fcntl(ch_->fd, F_GETFL) | O_NONBLOCK);
  addrinfo hints{}, *res = nullptr;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  std::string port = std::to_string(opt_.port);
  int rc = getaddrinfo(opt_.host.c_str(), port.c_str(), &hints, &res);
  if (rc != 0) {
    std::fprintf(stderr, "farmem-server: cannot listen on %s: cannot resolve %s: %s\n", uri.c_str(),
                 opt_.host.c_str(), gai_strerror(rc));
    return false;
  }
  bool ok = rdma_create_id(ch_, &listen_, nullptr, RDMA_PS_TCP) == 0 &&
            rdma_bind_addr(listen_, res->ai_addr) == 0 && rdma_listen(listen_, 128) == 0;
  freeaddrinfo(res);
  if (!ok) {
    std::fprintf(stderr,
                 "farmem-server: cannot listen on %s: %s; HOST must be an address on an RDMA interface "
                 "(with Soft-RoCE, the IP of the netdev rxe is bound to) or 0.0.0.0\n",
                 uri.c_str(), std::strerror(errno));
    return false;
  }
  unsigned actual = ntohs(rdma_get_src_port(listen_));
  uri_ = host_port_uri("rdma", opt_.host, actual);
  std::printf("farmem-server: listening on rdma://%s:%u, capacity %llu MiB, token %s\n", opt_.host.c_str(), actual,
              static_cast<unsigned long long>(ctx_.account.capacity() >> 20),
              ctx_.token.empty() ? "not required" : "required");
  std::fflush(stdout);
  return true;
}

Device* Server::device(ibv_context* ctx) {
  for (auto& d : devices_)
    if (d->ctx == ctx) return d.get();
  auto d = std::make_unique<Device>();
  d->ctx = ctx;
  d->cc = ibv_create_comp_channel(ctx);
  if (!d->cc) return nullptr;
  fcntl(d->cc->fd, F_SETFL, fcntl(d->cc->fd, F_GETFL) | O_NONBLOCK);
  d->odp = rd::odp_supported(ctx);
  d->max_reads = rd::max_reads_in_flight(ctx, false);
  add_fd(ep_, d->cc->fd, devices_.size() + 2);
  std::printf("farmem-server: RDMA device %s: client memory is %s\n", ibv_get_device_name(ctx->device),
              d->odp ? "registered on demand (ODP): pages are used as written"
                     : "pinned when registered: a session uses its whole capacity");
  std::fflush(stdout);
  devices_.push_back(std::move(d));
  return devices_.back().get();
}

void Server::reject(rdma_cm_id* id, wire::Errc code, const std::string& msg) {
  auto data = rd::encode(rd::Reject{code, msg});
  rdma_reject(id, data.data(), static_cast<std::uint8_t>(data.size()));
  rdma_destroy_id(id);
}

Session* Server::new_session(Device& dev, std::uint64_t want, std::string* why) {
  void* base = mmap(nullptr, want, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (base == MAP_FAILED) {
    *why = "the server cannot map that much memory";
    return nullptr;
  }
  auto s = std::make_unique<Session>();
  s->base = static_cast<char*>(base);
  s->capacity = want;
  s->dev = &dev;
  s->pd = ibv_alloc_pd(dev.ctx);
  int access = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_WRITE |
               (dev.odp ? IBV_ACCESS_ON_DEMAND : 0);
  if (s->pd) s->mr = ibv_reg_mr(s->pd, base, want, access);
  if (!s->mr) {
    *why = "the server cannot register " + std::to_string(want >> 20) + " MiB for RDMA (" + std::strerror(errno) +
           "); ask for less (FARMEM_FAR_MEM) or raise the server's locked-memory limit";
    if (s->pd) ibv_dealloc_pd(s->pd);
    munmap(base, want);
    return nullptr;
  }
  do getrandom(&s->id, sizeof s->id, 0); while (s->id == 0 || sessions_.count(s->id));
  Session* raw = s.get();
  sessions_[s->id] = std::move(s);
  return raw;
}

// ADDRESS:PORT of the client that asked for a connection (its row in the statistics).
std::string peer_name(rdma_cm_id* id) {
  sockaddr* sa = rdma_get_peer_addr(id);
  char host[NI_MAXHOST], port[NI_MAXSERV];
  if (sa == nullptr ||
      getnameinfo(sa, sa->sa_family == AF_INET6 ? sizeof(sockaddr_in6) : sizeof(sockaddr_in), host, sizeof host, port,
                  sizeof port, NI_NUMERICHOST | NI_NUMERICSERV) != 0)
    return "?";
  return std::string(host) + ":" + port;
}

void Server::drop_session(Session* s) {
  ibv_dereg_mr(s->mr);
  ibv_dealloc_pd(s->pd);
  munmap(s->base, s->capacity);
  ctx_.account.give_back(s->capacity, *s->usage);
  ctx_.account.session_closed(s->usage);
  sessions_.erase(s->id);
}

void Server::post_recv(Conn& c, int slot) {
  ibv_sge sge{reinterpret_cast<std::uintptr_t>(c.buf.data() + slot * kCtlMsg), kCtlMsg, c.buf_mr->lkey};
  ibv_recv_wr wr{}, *bad = nullptr;
  wr.wr_id = static_cast<std::uint64_t>(slot);
  wr.sg_list = &sge;
  wr.num_sge = 1;
  if (ibv_post_recv(c.id->qp, &wr, &bad) != 0) rdma_disconnect(c.id);
}

void Server::on_connect_request(rdma_cm_id* id, const std::vector<std::uint8_t>& pdata, int initiator_depth) {
  rd::ConnectRequest req;
  std::string why;
  if (wire::Errc e = rd::decode(pdata.data(), pdata.size(), &req, &why); e != wire::Errc::Ok)
    return reject(id, e, e == wire::Errc::Version ? why : "malformed connect request: " + why);
  if (!req.proven) {  // the first connect: answered with a challenge
    auto data = rd::encode(auth_.challenge(req, now_ns()));
    rdma_reject(id, data.data(), static_cast<std::uint8_t>(data.size()));
    rdma_destroy_id(id);
    return;
  }
  rd::ServerProof proof;
  if (wire::Errc e = auth_.verify(req, now_ns(), &proof, &why); e != wire::Errc::Ok) return reject(id, e, why);
  Device* dev = device(id->verbs);
  if (!dev) return reject(id, wire::Errc::NoCapacity, "the server cannot create a completion channel");
  Session* s = nullptr;
  if (req.kind == rd::ConnKind::NewSession) {
    // Registered memory is pinned: an RDMA session takes its whole size at once.
    std::uint64_t want = (req.capacity + 4095) / 4096 * 4096;
    auto usage = std::make_shared<ClientUsage>();
    usage->client = peer_name(id);
    if (want == 0 || !ctx_.account.grant(want, *usage))
      return reject(id, wire::Errc::NoCapacity,
                    "the server cannot give " + std::to_string(want >> 20) + " MiB at once (RDMA memory is pinned): " +
                        ctx_.account.describe() + "; ask for less (FARMEM_FAR_MEM)");
    s = new_session(*dev, want, &why);
    if (!s) {
      ctx_.account.give_back(want, *usage);
      return reject(id, wire::Errc::NoCapacity, why);
    }
    s->usage = usage;
    ctx_.account.session_opened(usage);
  } else {
    auto it = sessions_.find(req.session);
    if (it == sessions_.end()) return reject(id, wire::Errc::NoSession, "no such session");
    s = it->second.get();
    if (s->dev != dev) return reject(id, wire::Errc::BadMessage, "queue pair on another RDMA device than its session");
  }
  auto c = std::make_unique<Conn>();
  c->id = id;
  c->session = s;
  c->control = req.kind == rd::ConnKind::NewSession;
  const int depth = c->control ? kCtlRecvs : 1;
  c->cq = ibv_create_cq(dev->ctx, 2 * depth + 2, c.get(), c->control ? dev->cc : nullptr, 0);
  ibv_qp_init_attr a{};
  a.send_cq = c->cq;
  a.recv_cq = c->cq;
  a.qp_type = IBV_QPT_RC;
  a.cap.max_send_wr = static_cast<std::uint32_t>(depth);
  a.cap.max_recv_wr = static_cast<std::uint32_t>(depth);
  a.cap.max_send_sge = 1;
  a.cap.max_recv_sge = 1;
  a.sq_sig_all = 1;
  bool ok = c->cq && rdma_create_qp(id, s->pd, &a) == 0;
  if (ok && c->control) {
    c->buf_mr = ibv_reg_mr(s->pd, c->buf.data(), c->buf.size(), IBV_ACCESS_LOCAL_WRITE);
    ok = c->buf_mr != nullptr;
    for (int i = 0; ok && i < kCtlRecvs; ++i) post_recv(*c, i);
    if (ok) ibv_req_notify_cq(c->cq, 0);
  }
  rd::Accept acc{s->id, s->capacity, reinterpret_cast<std::uint64_t>(s->base), s->mr->rkey, proof};
  auto data = rd::encode(acc);
  rdma_conn_param p{};
  p.private_data = data.data();
  p.private_data_len = static_cast<std::uint8_t>(data.size());
  p.responder_resources = static_cast<std::uint8_t>(std::min(std::max(initiator_depth, 1), dev->max_reads));
  p.initiator_depth = 0;
  p.rnr_retry_count = 7;
  if (ok) ok = rdma_accept(id, &p) == 0;
  if (!ok) {
    int err = errno;
    if (id->qp) rdma_destroy_qp(id);
    if (c->buf_mr) ibv_dereg_mr(c->buf_mr);
    if (c->cq) ibv_destroy_cq(c->cq);
    if (s->conns == 0) drop_session(s);
    return reject(id, wire::Errc::NoCapacity, std::string("the server cannot set up the connection: ") + std::strerror(err));
  }
  ++s->conns;
  conns_[id] = std::move(c);
}

void Server::close_conn(rdma_cm_id* id) {
  auto it = conns_.find(id);
  if (it == conns_.end()) return;
  Conn& c = *it->second;
  Session* s = c.session;
  rdma_disconnect(id);  // completes the disconnect handshake; harmless if already down
  if (id->qp) rdma_destroy_qp(id);
  if (c.buf_mr) ibv_dereg_mr(c.buf_mr);
  if (c.cq) ibv_destroy_cq(c.cq);
  rdma_destroy_id(id);
  conns_.erase(it);
  if (s && --s->conns == 0) drop_session(s);  // the client's last connection: reclaim its memory
}

void Server::on_cm_event() {
  for (;;) {
    rdma_cm_event* ev = nullptr;
    if (rdma_get_cm_event(ch_, &ev) != 0) return;  // EAGAIN: drained
    rdma_cm_event_type type = ev->event;
    rdma_cm_id* id = ev->id;
    std::vector<std::uint8_t> pdata;
    int initiator_depth = 0;
    if (type == RDMA_CM_EVENT_CONNECT_REQUEST) {
      const auto* p = static_cast<const std::uint8_t*>(ev->param.conn.private_data);
      if (p) pdata.assign(p, p + ev->param.conn.private_data_len);
      // The CM reports the request from our side: its responder_resources is the
      // client's initiator depth (how many READs it will have in flight).
      initiator_depth = ev->param.conn.responder_resources;
    }
    rdma_ack_cm_event(ev);
    switch (type) {
      case RDMA_CM_EVENT_CONNECT_REQUEST:
        on_connect_request(id, pdata, initiator_depth);
        break;
      case RDMA_CM_EVENT_DISCONNECTED:
      case RDMA_CM_EVENT_REJECTED:
      case RDMA_CM_EVENT_CONNECT_ERROR:
      case RDMA_CM_EVENT_UNREACHABLE:
      case RDMA_CM_EVENT_DEVICE_REMOVAL:
        close_conn(id);
        break;
      default:  // ESTABLISHED, TIMEWAIT_EXIT, ...: nothing to do
        break;
    }
  }
}

std::uint64_t Server::resident_bytes(const Session& s) const {
  constexpr std::uint64_t kChunk = 1ull << 30;  // 1 GiB (256 Ki pages) per mincore call
  thread_local std::vector<unsigned char> vec(kChunk / 4096);  // one per listener thread
  std::uint64_t pages = 0;
  for (std::uint64_t off = 0; off < s.capacity; off += kChunk) {
    std::uint64_t n = std::min(kChunk, s.capacity - off);
    if (mincore(s.base + off, n, vec.data()) != 0) continue;
    for (std::uint64_t i = 0; i < n / 4096; ++i) pages += vec[i] & 1;
  }
  return pages * 4096;
}

void Server::send_reply(Conn& c, const wire::Header& h) {
  char* slot = c.buf.data() + kCtlRecvs * kCtlMsg;
  std::memcpy(slot, &h, sizeof h);
  ibv_sge sge{reinterpret_cast<std::uintptr_t>(slot), kCtlMsg, c.buf_mr->lkey};
  ibv_send_wr wr{}, *bad = nullptr;
  wr.wr_id = kCtlRecvs;
  wr.sg_list = &sge;
  wr.num_sge = 1;
  wr.opcode = IBV_WR_SEND;
  wr.send_flags = IBV_SEND_SIGNALED;
  if (ibv_post_send(c.id->qp, &wr, &bad) != 0) rdma_disconnect(c.id);
}

// A control request (discard or usage) arrived in receive slot `slot`.
void Server::on_control(Conn& c, int slot, std::uint32_t len) {
  wire::Header h{};
  std::memcpy(&h, c.buf.data() + slot * kCtlMsg, sizeof h);
  post_recv(c, slot);
  Session& s = *c.session;
  auto fail = [&](wire::Errc e) {
    send_reply(c, wire::make(wire::Op::Error, h.id, 0, 0, 0, static_cast<std::uint32_t>(e)));
    rdma_disconnect(c.id);  // then DISCONNECTED closes it
  };
  std::string why;
  if (len != sizeof h) return fail(wire::Errc::BadMessage);
  if (wire::Errc e = wire::validate(h, false, &why); e != wire::Errc::Ok) return fail(e);
  const auto op = static_cast<wire::Op>(h.op);
  if (op == wire::Op::Usage)
    return send_reply(c, wire::make(wire::Op::Reply, h.id, resident_bytes(s), 0, 0));
  if (op != wire::Op::Discard) return fail(wire::Errc::BadMessage);  // pages move by RDMA, not here
  if (h.offset > s.capacity || h.size > s.capacity - h.offset) return fail(wire::Errc::OutOfRange);
  // With on-demand paging the device follows the unmap; pinned pages stay registered.
  if (s.dev->odp) madvise(s.base + h.offset, h.size, MADV_DONTNEED);
  send_reply(c, wire::make(wire::Op::Reply, h.id, h.offset, h.size, 0));
}

void Server::on_completions(Device& dev) {
  ibv_cq* cq = nullptr;
  void* ctx = nullptr;
  while (ibv_get_cq_event(dev.cc, &cq, &ctx) == 0) {
    ibv_ack_cq_events(cq, 1);
    ibv_req_notify_cq(cq, 0);
    Conn* c = static_cast<Conn*>(ctx);
    ibv_wc wc[16];
    int n;
    while ((n = ibv_poll_cq(cq, 16, wc)) > 0)
      for (int k = 0; k < n; ++k)
        if (wc[k].status == IBV_WC_SUCCESS && wc[k].opcode == IBV_WC_RECV && wc[k].wr_id < kCtlRecvs)
          on_control(*c, static_cast<int>(wc[k].wr_id), wc[k].byte_len);
    // Error completions are flushes of a connection going down: DISCONNECTED cleans up.
  }
}

void Server::print_usage(const char* why) {
  std::uint64_t used = 0, granted = 0;
  for (auto& [id, s] : sessions_) {
    used += resident_bytes(*s);
    granted += s->capacity;
  }
  std::printf("%s,\"clients\":%zu,\"connections\":%zu,\"used_bytes\":%llu,\"granted_bytes\":%llu,"
              "\"capacity_bytes\":%llu}\n",
              usage_head(why, "rdma", ctx_, uri_).c_str(), sessions_.size(), conns_.size(),
              static_cast<unsigned long long>(used), static_cast<unsigned long long>(granted),
              static_cast<unsigned long long>(ctx_.account.capacity()));
  std::fflush(stdout);
}

void Server::stop_listening() {
  if (listen_) rdma_destroy_id(listen_);
  if (ch_) rdma_destroy_event_channel(ch_);
  listen_ = nullptr;
  ch_ = nullptr;
}

int Server::run() {
  ep_ = epoll_create1(EPOLL_CLOEXEC);
  const bool listening = start_listening();
  if (!ctx_.control.started(listening)) {
    stop_listening();
    return listening ? 0 : 1;
  }
  add_fd(ep_, ch_->fd, kTagCm);
  add_fd(ep_, ctx_.control.fd(), kTagControl);
  epoll_event evs[16];
  for (;;) {
    int n = epoll_wait(ep_, evs, 16, -1);
    for (int i = 0; i < n; ++i) {
      std::uint64_t tag = evs[i].data.u64;
      if (tag == kTagCm) {
        on_cm_event();
      } else if (tag == kTagControl) {
        Control::Requests r = ctx_.control.take();
        if (r.usage) print_usage("usage");
        if (r.stop) {
          print_usage("exit");
          while (!conns_.empty()) close_conn(conns_.begin()->first);
          stop_listening();
          return 0;
        }
      } else if (tag - 2 < devices_.size()) {
        on_completions(*devices_[tag - 2]);
      }
    }
  }
}

}  // namespace

int run_rdma(const RdmaServerOptions& opt, ListenerContext& ctx) {
  Server s(opt, ctx);
  return s.run();
}

}  // namespace farmem::server
