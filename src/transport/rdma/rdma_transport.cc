// The rdma:// transport: far memory in a farmem-server's registered memory,
// moved with one-sided RDMA READ and WRITE (the server's CPU never touches a
// page). librdmacm sets up one RC connection for control, which creates the
// session (the client's own memory region and rkey on the server), and one per
// core (QueuePair), each with its own completion queue. submit() posts all
// queued transfers as one chained list of work requests; only every Nth and
// the last are signaled (SendAccounting, rdma_wr.hpp). Control requests
// (discard, usage) are wire-protocol headers sent on the control connection.
// A failed or silent connection ends the process with a clear message; as one
// server of a pool, it fails the requests instead (the pool goes elsewhere), and
// its queue pairs stage transfers through registered buffers of their own,
// since the pool's pieces are not in registered memory.
#include <fcntl.h>
#include <netdb.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

#include "farmem/runtime.hpp"
#include "transport/auth.hpp"
#include "transport/queue_pair.hpp"
#include "transport/rdma/rdma_logic.hpp"
#include "transport/rdma/rdma_transport.hpp"
#include "transport/rdma/rdma_verbs.hpp"
#include "transport/rdma/rdma_wr.hpp"
#include "transport/wire.hpp"
#include "runtime/fatal.hpp"
#include "runtime/os.hpp"

namespace farmem::net {
namespace {

using detail::now_ns;
using rdma::Endpoint;

constexpr int kCmTimeoutMs = 5000;
constexpr std::uint64_t kSilenceLimitNs = 10ull * 1000 * 1000 * 1000;
constexpr std::uint8_t kAckTimeout = 14;  // 4.096 us << 14 = 67 ms per try, 7 retries: ~0.5 s to notice a dead peer
constexpr std::size_t kCtlMsg = sizeof(wire::Header);

void set_nonblocking(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }

// One librdmacm connection with its own event channel, completion channel,
// completion queue and RC queue pair. Set up step by step (resolve, create_qp,
// connect) so the caller can post receives before connecting.
class Connection {
 public:
  explicit Connection(const Endpoint& ep) : ep_(ep) {}
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;
  ~Connection() {
    if (id && connected_) rdma_disconnect(id);
    if (id && id->qp) rdma_destroy_qp(id);
    if (cq) ibv_destroy_cq(cq);
    if (cc) ibv_destroy_comp_channel(cc);
    if (id) rdma_destroy_id(id);
    if (ch) rdma_destroy_event_channel(ch);
  }

  void resolve() {
    ch = rdma_create_event_channel();
    if (!ch)
      throw Error(ep_.uri + ": cannot open the RDMA connection manager (/dev/infiniband/rdma_cm: " +
                  std::strerror(errno) + "); load the rdma_ucm module or use tcp://HOST:PORT");
    set_nonblocking(ch->fd);
    if (rdma_create_id(ch, &id, this, RDMA_PS_TCP) != 0)
      throw Error(ep_.uri + ": rdma_create_id failed: " + std::strerror(errno));
    addrinfo hints{}, *res = nullptr;
    hints.ai_socktype = SOCK_STREAM;
    std::string port = std::to_string(ep_.port);
    int rc = getaddrinfo(ep_.host.c_str(), port.c_str(), &hints, &res);
    if (rc != 0) throw Error("cannot resolve the memory server " + ep_.uri + ": " + gai_strerror(rc));
    rc = rdma_resolve_addr(id, nullptr, res->ai_addr, kCmTimeoutMs);
    freeaddrinfo(res);
    if (rc != 0) unreachable("address resolution", std::strerror(errno));
    expect(RDMA_CM_EVENT_ADDR_RESOLVED, "address resolution");
    if (rdma_resolve_route(id, kCmTimeoutMs) != 0) unreachable("route resolution", std::strerror(errno));
    expect(RDMA_CM_EVENT_ROUTE_RESOLVED, "route resolution");
  }

  void create_qp(ibv_pd* pd, unsigned send_depth, unsigned recv_depth) {
    cc = ibv_create_comp_channel(id->verbs);
    if (!cc) throw Error(ep_.uri + ": cannot create a completion channel: " + std::strerror(errno));
    set_nonblocking(cc->fd);
    cq = ibv_create_cq(id->verbs, static_cast<int>(send_depth + recv_depth), nullptr, cc, 0);
    if (!cq)
      throw Error(ep_.uri + ": cannot create a completion queue of " + std::to_string(send_depth + recv_depth) +
                  " entries: " + std::strerror(errno) + "; lower FARMEM_RDMA_QUEUE_DEPTH");
    ibv_qp_init_attr a{};
    a.send_cq = cq;
    a.recv_cq = cq;
    a.qp_type = IBV_QPT_RC;
    a.cap.max_send_wr = send_depth;
    a.cap.max_recv_wr = recv_depth;
    a.cap.max_send_sge = 1;
    a.cap.max_recv_sge = 1;
    a.sq_sig_all = 0;  // selective signaling
    if (rdma_create_qp(id, pd, &a) != 0)
      throw Error(ep_.uri + ": cannot create an RC queue pair with " + std::to_string(send_depth) +
                  " send slots: " + std::strerror(errno) + "; lower FARMEM_RDMA_QUEUE_DEPTH");
  }

  // Connects with `req` in the private data. True: accepted, *acc is what the
  // server granted; false: refused with a challenge (*challenge), and this
  // connection is done (a new one makes the second connect). Throws a refusal as one line.
  bool connect(const rdma::ConnectRequest& req, int initiator_depth, rdma::Accept* acc, rdma::Challenge* challenge) {
    auto data = rdma::encode(req);
    rdma_conn_param p{};
    p.private_data = data.data();
    p.private_data_len = static_cast<std::uint8_t>(data.size());
    p.initiator_depth = static_cast<std::uint8_t>(initiator_depth);
    p.responder_resources = 0;  // the server never reads from us
    p.retry_count = 7;
    p.rnr_retry_count = 7;
    std::uint8_t timeout = kAckTimeout;
    rdma_set_option(id, RDMA_OPTION_ID, RDMA_OPTION_ID_ACK_TIMEOUT, &timeout, sizeof timeout);
    if (rdma_connect(id, &p) != 0) unreachable("connect", std::strerror(errno));
    rdma_cm_event* ev = rdma::wait_cm_event(ch, kCmTimeoutMs);
    if (!ev)
      throw Error("the memory server " + ep_.uri + " did not answer the connection request within " +
                  std::to_string(kCmTimeoutMs / 1000) + " s; is farmem-server --listen " + ep_.uri + " running?");
    rdma_cm_event_type type = ev->event;
    int status = ev->status;
    std::vector<std::uint8_t> pdata(static_cast<const std::uint8_t*>(ev->param.conn.private_data),
                                    static_cast<const std::uint8_t*>(ev->param.conn.private_data) +
                                        (ev->param.conn.private_data ? ev->param.conn.private_data_len : 0));
    rdma_ack_cm_event(ev);
    if (type == RDMA_CM_EVENT_REJECTED) {
      if (rdma::decode(pdata.data(), pdata.size(), challenge)) return false;
      rdma::Reject r;
      if (rdma::decode(pdata.data(), pdata.size(), &r)) {
        std::string msg = "the memory server " + ep_.uri + " refused us: " + r.message;
        if (r.code == wire::Errc::BadToken) msg += "; set FARMEM_TOKEN_FILE to the server's token file";
        throw Error(msg);
      }
      throw Error("cannot connect to the memory server " + ep_.uri + ": rejected (status " + std::to_string(status) +
                  "); start farmem-server --listen " + ep_.uri + " or fix FARMEM_BACKEND");
    }
    if (type != RDMA_CM_EVENT_ESTABLISHED)
      throw Error("cannot connect to the memory server " + ep_.uri + ": " + rdma_event_str(type) +
                  " (status " + std::to_string(status) + "); start farmem-server --listen " + ep_.uri +
                  " or fix FARMEM_BACKEND");
    connected_ = true;
    std::string why;
    if (!rdma::decode(pdata.data(), pdata.size(), acc, &why))
      throw Error("the memory server " + ep_.uri + " sent a malformed accept (" + why + "); is it a farmem-server?");
    return true;
  }

  rdma_event_channel* ch = nullptr;
  rdma_cm_id* id = nullptr;
  ibv_comp_channel* cc = nullptr;
  ibv_cq* cq = nullptr;

 private:
  [[noreturn]] void unreachable(const char* step, const std::string& why) {
    throw Error("cannot reach the memory server " + ep_.uri + " over RDMA (" + step + ": " + why +
                "); HOST must be an address on the server's RDMA interface (with Soft-RoCE, the IP of "
                "the netdev rxe is bound to), or use tcp://HOST:PORT");
  }

  void expect(rdma_cm_event_type want, const char* step) {
    rdma_cm_event* ev = rdma::wait_cm_event(ch, kCmTimeoutMs + 1000);
    if (!ev) unreachable(step, errno == ETIMEDOUT ? "timed out" : std::strerror(errno));
    rdma_cm_event_type got = ev->event;
    int status = ev->status;
    rdma_ack_cm_event(ev);
    if (got != want) unreachable(step, std::string(rdma_event_str(got)) + ", status " + std::to_string(status));
  }

  Endpoint ep_;
  bool connected_ = false;
};

struct LocalRegion {
  std::uintptr_t base;
  std::size_t len;
  std::uint32_t lkey;
};

struct RemoteRegion {
  std::uint64_t addr;
  std::uint64_t capacity;
  std::uint32_t rkey;
};

// What a pool member's queue pair adds: it fails requests instead of ending
// the process, gives up on a server silent for the pool's timeout, and stages
// every transfer through its own registered buffer (rdma::StagingSlots).
struct MemberQp {
  std::uint64_t silence_ns;
  char* staging;         // slots * StagingSlots::kSlotBytes, registered
  std::uint32_t lkey;    // the staging buffer's
  ibv_mr* mr;            // deregistered with the queue pair
};

class RdmaQueuePair final : public QueuePair {
 public:
  // member: a pool member's queue pair (nullptr alone); c == nullptr: a member
  // whose server could not be reached, failing everything from the start.
  RdmaQueuePair(std::unique_ptr<Connection> c, RemoteRegion remote, std::vector<LocalRegion> local,
                rdma::Tuning t, std::string uri, const MemberQp* member = nullptr)
      : conn_(std::move(c)),
        remote_(remote),
        local_(std::move(local)),
        acct_(t.queue_depth, t.signal_every),
        wrs_(t.queue_depth),
        sges_(t.queue_depth),
        uri_(std::move(uri)),
        member_(member != nullptr),
        member_qp_(member ? *member : MemberQp{}),
        slots_(member ? t.queue_depth : 0),
        dead_(conn_ == nullptr) {}
  ~RdmaQueuePair() override {
    conn_.reset();  // no transfer lands in the staging buffer after it is gone
    if (member_qp_.mr) ibv_dereg_mr(member_qp_.mr);
    std::free(member_qp_.staging);
  }

  void post_read(std::uint64_t off, void* local, std::size_t len, std::uint64_t cookie) override {
    queue(false, off, local, len, cookie);
  }
  void post_write(std::uint64_t off, const void* local, std::size_t len, std::uint64_t cookie) override {
    queue(true, off, local, len, cookie);
  }

  // Posts everything queued: one chained list per ibv_post_send, as long as the
  // send queue has room; when it is full, reaps completions until it has.
  void submit() override {
    std::size_t i = 0;
    while (i < pending_.size() && !dead_) {
      std::size_t n = std::min<std::size_t>(acct_.room(), pending_.size() - i);
      if (n == 0) {
        if (reap() == 0) check_silence();
        continue;
      }
      if (acct_.outstanding() == 0) progress_ns_ = now_ns();
      ibv_send_wr* head = rdma::build_send_list(&pending_[i], n, acct_, remote_.addr, remote_.rkey,
                                                wrs_.data(), sges_.data());
      ibv_send_wr* bad = nullptr;
      if (int rc = ibv_post_send(conn_->id->qp, head, &bad); rc != 0)
        dead(std::string("ibv_post_send: ") + detail::errno_text(rc));
      i += n;
    }
    if (dead_)  // a member's server died: what was not posted fails too
      for (; i < pending_.size(); ++i) finish(pending_[i].cookie, true);
    pending_.clear();
  }

  std::size_t poll(Completion* out, std::size_t max) override {
    if (done_.empty() && !dead_) {
      reap();
      if (done_.empty() && acct_.outstanding()) check_silence();
    }
    return take_completions(done_, out, max);
  }

  // Sleeps on the completion channel until the CQ has something (or timeout_us).
  void wait(unsigned timeout_us) override {
    if (dead_ || acct_.outstanding() == 0 || !done_.empty()) return;
    if (!armed_) {
      ibv_req_notify_cq(conn_->cq, 0);
      armed_ = true;
      if (reap() > 0) return;  // arrived before the arming
    }
    pollfd p{conn_->cc->fd, POLLIN, 0};
    timespec ts{0, static_cast<long>(timeout_us) * 1000};
    if (ppoll(&p, 1, &ts, nullptr) == 1) {
      ibv_cq* cq = nullptr;
      void* ctx = nullptr;
      if (ibv_get_cq_event(conn_->cc, &cq, &ctx) == 0) {
        ibv_ack_cq_events(cq, 1);
        armed_ = false;
      }
    }
  }

 private:
  void queue(bool write, std::uint64_t off, const void* local, std::size_t len, std::uint64_t cookie) {
    if (off > remote_.capacity || len > remote_.capacity - off)
      detail::fatal("rdma transfer at far offset %llu (+%zu) is outside the session's %llu MiB (runtime bug)",
                    static_cast<unsigned long long>(off), len,
                    static_cast<unsigned long long>(remote_.capacity >> 20));
    if (member_) return queue_staged(write, off, local, len, cookie);
    auto a = reinterpret_cast<std::uintptr_t>(local);
    for (const LocalRegion& r : local_)
      if (a >= r.base && a - r.base + len <= r.len) {
        pending_.push_back({write, a, static_cast<std::uint32_t>(len), r.lkey, off, cookie});
        return;
      }
    detail::fatal("rdma transfer from %p, which is not memory registered with the RDMA device (runtime bug)", local);
  }

  // A member's transfer goes through a staging slot: a write's bytes are
  // copied in now, a read's copied out at its completion (finish).
  void queue_staged(bool write, std::uint64_t off, const void* local, std::size_t len, std::uint64_t cookie) {
    if (len > rdma::StagingSlots::kSlotBytes)
      detail::fatal("rdma member transfer of %zu bytes, more than a page (runtime bug)", len);
    if (dead_) return finish_unstaged(cookie);
    const rdma::StagingSlots::Entry e{cookie, write ? nullptr : const_cast<void*>(local), len};
    long slot;
    while ((slot = slots_.take(e)) < 0 && !dead_) {  // every slot in flight: post, then reap one
      submit();
      if (!dead_ && reap() == 0) check_silence();
    }
    if (dead_) return finish_unstaged(cookie);
    char* buf = member_qp_.staging + static_cast<std::size_t>(slot) * rdma::StagingSlots::kSlotBytes;
    if (write) std::memcpy(buf, local, len);
    pending_.push_back({write, reinterpret_cast<std::uintptr_t>(buf), static_cast<std::uint32_t>(len),
                        member_qp_.lkey, off, static_cast<std::uint64_t>(slot)});
  }

  // Moves finished transfers to done_; returns how many work completions were read.
  int reap() {
    ibv_wc wc[32];
    int n = ibv_poll_cq(conn_->cq, 32, wc);
    if (n < 0) dead("ibv_poll_cq failed");
    for (int k = 0; k < n && !dead_; ++k) {
      if (wc[k].status != IBV_WC_SUCCESS) {
        dead(std::string("work request failed: ") + ibv_wc_status_str(wc[k].status));
        break;
      }
      retired_.clear();
      if (acct_.retire_through(wc[k].wr_id, retired_) < 0) {
        dead("a completion for a work request we did not post");
        break;
      }
      for (std::uint64_t c : retired_) finish(c, false);
    }
    if (n > 0) progress_ns_ = now_ns();
    return n;
  }

  // A posted transfer is done (or failed): its cookie to done_; for a member,
  // `c` is its staging slot, whose read bytes go where the caller wanted them.
  void finish(std::uint64_t c, bool failed) {
    if (!member_) {
      done_.push_back({c, failed});
      return;
    }
    const rdma::StagingSlots::Entry e = slots_.release(static_cast<unsigned>(c));
    if (!failed && e.read_dst)
      std::memcpy(e.read_dst, member_qp_.staging + c * rdma::StagingSlots::kSlotBytes, e.len);
    done_.push_back({e.cookie, failed});
  }
  void finish_unstaged(std::uint64_t cookie) { done_.push_back({cookie, true}); }

  // The server is gone. Alone, that ends the process; in a pool, every request
  // in flight and every later one completes as failed.
  void dead(const std::string& why) {
    if (!member_)
      detail::fatal("lost the memory server %s (%s); far memory is gone: restart the application "
                    "when the server is back",
                    uri_.c_str(), why.c_str());
    if (dead_) return;
    dead_ = true;
    retired_.clear();
    acct_.abandon(retired_);
    for (std::uint64_t c : retired_) finish(c, true);
    conn_.reset();
  }

  void check_silence() {
    const std::uint64_t limit = member_ ? member_qp_.silence_ns : kSilenceLimitNs;
    if (now_ns() - progress_ns_ <= limit) return;
    if (!member_)
      detail::fatal("the memory server %s has not completed a transfer for %llu s; giving up", uri_.c_str(),
                    static_cast<unsigned long long>(kSilenceLimitNs / 1000000000ull));
    dead("no completion for " + std::to_string(limit / 1000000) + " ms");
  }

  std::unique_ptr<Connection> conn_;
  RemoteRegion remote_;
  std::vector<LocalRegion> local_;
  rdma::SendAccounting acct_;
  std::vector<rdma::Transfer> pending_;
  std::vector<ibv_send_wr> wrs_;
  std::vector<ibv_sge> sges_;
  std::deque<Completion> done_;
  std::deque<std::uint64_t> retired_;
  std::uint64_t progress_ns_ = 0;
  bool armed_ = false;
  std::string uri_;
  const bool member_;
  MemberQp member_qp_;
  rdma::StagingSlots slots_;
  bool dead_;
};

class RdmaTransport final : public Transport {
 public:
  // member: one server of a pool (its capacity and timeout; requests fail
  // instead of ending the process); nullptr: the process's only server.
  explicit RdmaTransport(const Config& cfg, const MemberOptions* member = nullptr)
      : ep_(rdma::parse_uri(member ? member->uri : cfg.backend, false, member ? "FARMEM_BACKEND (a pool member)" : "FARMEM_BACKEND")),
        tuning_(rdma::parse_tuning(std::getenv("FARMEM_RDMA_QUEUE_DEPTH"), std::getenv("FARMEM_RDMA_SIGNAL_EVERY"))),
        token_(wire::read_client_token(cfg.token_file, wire::kMaxToken)),
        member_(member != nullptr),
        silence_ns_(member ? member->timeout_ns : kSilenceLimitNs) {
    if (std::string why = rdma::no_device_reason(); !why.empty())
      throw Error(ep_.uri + ": " + why + "; use tcp://HOST:PORT (farmem-server --listen tcp://...) or " +
                  rdma::kSoftRoceHint);
    const std::uint64_t want = member ? member->capacity : cfg.far_mem_bytes;
    rdma::Accept acc = handshake(ctl_, rdma::first_connect(rdma::ConnKind::NewSession, 0, want), false, [&] {
      auto c = std::make_unique<Connection>(ep_);
      c->resolve();
      if (!pd_) {  // the first connection's device holds everything of this transport
        pd_ = ibv_alloc_pd(c->id->verbs);
        if (!pd_) throw Error(ep_.uri + ": cannot allocate a protection domain: " + std::strerror(errno));
        odp_ = rdma::odp_supported(c->id->verbs);
        ctl_mr_ = ibv_reg_mr(pd_, ctl_buf_, sizeof ctl_buf_, IBV_ACCESS_LOCAL_WRITE);
        if (!ctl_mr_)
          throw Error(ep_.uri + ": cannot register a control buffer: " + std::strerror(errno) + locked_hint());
      } else if (c->id->verbs != pd_->context) {
        throw Error(ep_.uri + " resolved to another RDMA device on the second connect");
      }
      c->create_qp(pd_, 2, 2);
      return c;
    });
    // Nothing comes on the control connection but replies to our requests, so the receive can follow the accept.
    if (!post_ctl_recv()) throw Error(ep_.uri + ": cannot post a receive on the control connection");
    if (acc.capacity < want)
      throw Error("the memory server " + ep_.uri + " granted less memory than " +
                  (member ? std::string("the pool asks of each server (FARMEM_FAR_MEM / K)") : "FARMEM_FAR_MEM asks for"));
    session_ = acc.session;
    remote_ = {acc.remote_addr, acc.capacity, acc.rkey};
  }

  ~RdmaTransport() override {
    shutdown();
    for (ibv_mr* mr : local_mrs_) ibv_dereg_mr(mr);
    // pd_ stays: queue pairs handed out may still use it until the process exits.
  }

  void register_local(void* base, std::size_t len) override {
    int access = IBV_ACCESS_LOCAL_WRITE | (odp_ ? IBV_ACCESS_ON_DEMAND : 0);
    ibv_mr* mr = ibv_reg_mr(pd_, base, len, access);
    if (!mr)
      throw Error(ep_.uri + ": cannot register the frame pool (" + std::to_string(len >> 20) +
                  " MiB) with the RDMA device: " + std::strerror(errno) + locked_hint() +
                  " or lower FARMEM_LOCAL_MEM");
    local_mrs_.push_back(mr);
    local_.push_back({reinterpret_cast<std::uintptr_t>(base), len, mr->lkey});
  }
  bool pins_local_memory() const override { return !odp_ && !local_mrs_.empty(); }

  std::unique_ptr<QueuePair> create_qp() override {
    MemberQp staged{silence_ns_, nullptr, 0, nullptr};
    try {
      if (member_) {  // the pool's buffers are not registered: a staging buffer of the queue pair's own
        const std::size_t bytes = std::size_t{tuning_.queue_depth} * rdma::StagingSlots::kSlotBytes;
        if (posix_memalign(reinterpret_cast<void**>(&staged.staging), 4096, bytes) != 0)
          throw Error(ep_.uri + ": no memory for a queue pair's staging buffer");
        staged.mr = ibv_reg_mr(pd_, staged.staging, bytes, IBV_ACCESS_LOCAL_WRITE);
        if (!staged.mr)
          throw Error(ep_.uri + ": cannot register a queue pair's staging buffer (" + std::to_string(bytes >> 10) +
                      " KiB): " + std::strerror(errno) + locked_hint());
        staged.lkey = staged.mr->lkey;
      }
      std::unique_ptr<Connection> c;
      rdma::Accept acc = handshake(c, rdma::first_connect(rdma::ConnKind::Attach, session_, 0), true, [&] {
        auto d = std::make_unique<Connection>(ep_);
        d->resolve();
        if (d->id->verbs != pd_->context)
          throw Error(ep_.uri + " resolves to another RDMA device than the control connection did");
        d->create_qp(pd_, tuning_.queue_depth, 1);
        return d;
      });
      if (acc.session != session_ || acc.remote_addr != remote_.addr || acc.rkey != remote_.rkey)
        throw Error("the memory server " + ep_.uri + " attached a queue pair to another session");
      return std::make_unique<RdmaQueuePair>(std::move(c), remote_, local_, tuning_, ep_.uri,
                                             member_ ? &staged : nullptr);
    } catch (const Error& e) {
      if (!member_) detail::fatal("%s", e.what());
      // A queue pair that fails everything: the pool reads and writes elsewhere.
      return std::make_unique<RdmaQueuePair>(nullptr, remote_, local_, tuning_, ep_.uri, &staged);
    }
  }

  void discard(std::uint64_t off, std::uint64_t len) override {
    std::lock_guard<std::mutex> g(mu_);
    for (std::uint64_t done = 0; done < len && ctl_;) {
      std::uint64_t n = std::min<std::uint64_t>(len - done, 1ull << 30) & ~std::uint64_t{4095};
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
    ctl_.reset();  // disconnects; the server keeps the session while queue pairs remain
    if (ctl_mr_) ibv_dereg_mr(ctl_mr_);
    ctl_mr_ = nullptr;
  }
  std::string describe() const override { return ep_.uri; }

 private:
  static std::string locked_hint() {
    return errno == ENOMEM || errno == EPERM
               ? "; raise the locked-memory limit (ulimit -l unlimited, LimitMEMLOCK=infinity for a service)"
               : "";
  }

  bool post_ctl_recv() {
    ibv_sge sge{reinterpret_cast<std::uintptr_t>(ctl_buf_ + kCtlMsg), kCtlMsg, ctl_mr_->lkey};
    ibv_recv_wr wr{}, *bad = nullptr;
    wr.wr_id = 1;
    wr.sg_list = &sge;
    wr.num_sge = 1;
    return ibv_post_recv(ctl_->id->qp, &wr, &bad) == 0;
  }

  // The control connection failed. Alone, that ends the process; a pool
  // member's answers zero from then on (its queue pairs notice on their own).
  wire::Header control_lost(const std::string& why) {
    if (!member_) detail::fatal("lost the memory server %s (control connection: %s)", ep_.uri.c_str(), why.c_str());
    ctl_.reset();
    return wire::Header{};
  }

  // One request on the control connection: SEND the header, wait for the reply's RECV.
  wire::Header request(const wire::Header& h) {
    std::memcpy(ctl_buf_, &h, sizeof h);
    ibv_sge sge{reinterpret_cast<std::uintptr_t>(ctl_buf_), kCtlMsg, ctl_mr_->lkey};
    ibv_send_wr wr{}, *bad = nullptr;
    wr.wr_id = 0;
    wr.sg_list = &sge;
    wr.num_sge = 1;
    wr.opcode = IBV_WR_SEND;
    wr.send_flags = IBV_SEND_SIGNALED;
    if (ibv_post_send(ctl_->id->qp, &wr, &bad) != 0) return control_lost("ibv_post_send failed");
    bool sent = false, replied = false;
    std::uint32_t got = 0;
    const std::uint64_t start = now_ns();
    while (!sent || !replied) {
      ibv_wc wc[2];
      int n = ibv_poll_cq(ctl_->cq, 2, wc);
      for (int k = 0; k < n; ++k) {
        if (wc[k].status != IBV_WC_SUCCESS) return control_lost(ibv_wc_status_str(wc[k].status));
        if (wc[k].opcode == IBV_WC_RECV) {
          replied = true;
          got = wc[k].byte_len;
        } else {
          sent = true;
        }
      }
      if (n == 0) {
        if (now_ns() - start > silence_ns_)
          return control_lost("no answer to a control request within " + std::to_string(silence_ns_ / 1000000) + " ms");
        timespec ts{0, 20000};
        nanosleep(&ts, nullptr);
      }
    }
    wire::Header r{};
    std::memcpy(&r, ctl_buf_ + kCtlMsg, sizeof r);
    if (!post_ctl_recv()) return control_lost("ibv_post_recv failed");
    std::string why;
    if (got != sizeof r || wire::validate(r, true, &why) != wire::Errc::Ok)
      detail::fatal("the memory server %s sent a malformed control reply (%s)", ep_.uri.c_str(),
                    got != sizeof r ? "wrong size" : why.c_str());
    if (static_cast<wire::Op>(r.op) == wire::Op::Error)
      detail::fatal("the memory server %s refused a request (error %u)", ep_.uri.c_str(), r.status);
    return r;
  }

  // The token's challenge and response (docs/protocol.md, RDMA): the first
  // connect is refused with the server's challenge; a rejected connection
  // cannot connect again, so open() makes a new one for the second, which
  // carries our proof and is accepted with the server's. Returns that accept;
  // c is the connection made.
  rdma::Accept handshake(std::unique_ptr<Connection>& c, const rdma::ConnectRequest& first, bool data_qp,
                         const std::function<std::unique_ptr<Connection>()>& open) {
    rdma::Accept acc;
    rdma::Challenge ch;
    auto depth = [&] { return data_qp ? rdma::max_reads_in_flight(c->id->verbs, true) : 0; };
    c = open();
    if (c->connect(first, depth(), &acc, &ch))
      throw Error("the memory server " + ep_.uri + " accepted us without a challenge; is it a farmem-server of "
                  "this release?");
    if (!token_.empty() && ch.no_token) throw Error(auth::no_token_refusal(ep_.uri));
    c = open();
    if (!c->connect(rdma::second_connect(first, ch, token_), depth(), &acc, &ch))
      throw Error("the memory server " + ep_.uri + " challenged our proof again; try again");
    if (!rdma::server_proven(first, ch, token_, acc)) throw Error(auth::unproven_refusal(ep_.uri));
    return acc;
  }

  Endpoint ep_;
  rdma::Tuning tuning_;
  std::string token_;
  std::unique_ptr<Connection> ctl_;
  ibv_pd* pd_ = nullptr;
  bool odp_ = false;
  alignas(64) char ctl_buf_[2 * kCtlMsg] = {};  // [send | receive]
  ibv_mr* ctl_mr_ = nullptr;
  std::vector<ibv_mr*> local_mrs_;
  std::vector<LocalRegion> local_;
  std::uint64_t session_ = 0;
  RemoteRegion remote_{};
  const bool member_;
  const std::uint64_t silence_ns_;
  std::mutex mu_;
};

}  // namespace

std::unique_ptr<Transport> connect_rdma(const Config& cfg) { return std::make_unique<RdmaTransport>(cfg); }

std::unique_ptr<Transport> connect_rdma_member(const Config& cfg, const MemberOptions& member) {
  return std::make_unique<RdmaTransport>(cfg, &member);
}

}  // namespace farmem::net
