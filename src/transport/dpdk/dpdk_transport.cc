// The dpdk:// transport: far memory on a farmem-server over DPDK ethdev
// (net_memif between processes here, a NIC port elsewhere). Each QueuePair owns
// one rx/tx queue ("lane") of the port, so cores share no lock; lane 0 is the
// control lane (hello, discard, usage, heartbeats, bye) behind a mutex. Every
// request has a lane sequence number and a table slot; the reply must echo both
// to be accepted. Lost packets are retransmitted after a timeout (doubling);
// the server executes writes once per seq, so nothing is lost or applied twice.
// A server silent for 10 s ends the process with one line; a pool member's
// (MemberOptions) instead fails what is in flight and what comes after, and
// the pool reads and writes elsewhere. Each server (URI) has a device of its
// own in the one EAL of the process.
#include "transport/dpdk/dpdk_transport.hpp"

#include <sched.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include <rte_ethdev.h>
#include <rte_mbuf.h>

#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "farmem/runtime.hpp"
#include "transport/auth.hpp"
#include "transport/dpdk/dpdk_port.hpp"
#include "transport/dpdk/dpdk_proto.hpp"
#include "transport/wire.hpp"
#include "runtime/fatal.hpp"
#include "runtime/os.hpp"

namespace farmem::net {
namespace {

using namespace dpdk;
using detail::now_ns;

constexpr std::uint64_t kFirstRtoNs = 10'000'000;    // 10 ms: a descheduled server is not a loss
constexpr std::uint64_t kMaxRtoNs = 500'000'000;     // backoff cap
constexpr std::uint64_t kSilenceNs = 10'000'000'000;  // then the server is gone
constexpr std::uint64_t kLinkWaitNs = 5'000'000'000;
constexpr std::uint64_t kHeartbeatNs = 1'000'000'000;

// Per server (URI), for the life of the process: a device cannot be set up twice.
struct Shared {
  Uri uri;
  std::atomic<bool> dead{false};  // a pool member's server was lost; a new session clears it
  rte_mempool* pool = nullptr;
  Device dev;
  std::uint8_t dst[6] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
  std::mutex mu;  // lane allocation only
  std::vector<bool> lane_busy;
  std::vector<std::uint64_t> lane_session, lane_next_seq;  // seq numbering survives queue pairs
};
std::map<std::string, Shared*> g_shared;  // by URI; never freed (DPDK devices live as long as the EAL)
std::mutex g_shared_mu;

Shared& shared_for(const Uri& u) {
  std::lock_guard<std::mutex> g(g_shared_mu);
  if (auto it = g_shared.find(u.text); it != g_shared.end()) return *it->second;
  for (auto& [text, other] : g_shared)
    if (other->uri.memif != u.memif || (!u.memif && other->uri.port == u.port))
      throw Error("FARMEM_BACKEND=" + u.text + ": this process already uses " + text +
                  (u.memif ? "; memif and NIC ports do not mix in one process" : " on the same port"));
  eal_init_once(u, "farmem");
  auto* s = new Shared;
  s->uri = u;
  const std::string n = std::to_string(g_shared.size());
  s->pool = make_pool("farmem_client" + n, 1024 + kWindow * u.queues);  // every lane's window in flight, plus rx
  s->dev = open_device(u, false, u.id, s->pool, n);
  if (u.have_peer) std::memcpy(s->dst, u.peer, 6);
  s->lane_busy.assign(u.queues, false);
  s->lane_busy[0] = true;  // control
  s->lane_session.assign(u.queues, 0);
  s->lane_next_seq.assign(u.queues, 1);
  const std::uint64_t t0 = now_ns();
  while (!link_up(s->dev.port)) {
    if (now_ns() - t0 > kLinkWaitNs) {
      g_shared[u.text] = s;  // keep the device; a later attempt reuses it
      if (u.memif)
        throw Error("no farmem-server answered on memif socket " + u.socket + " id " + std::to_string(u.id) +
                    " within 5 s; start farmem-server --listen dpdk://memif" + u.socket +
                    ", or pick a free id= (one client per memif id), or match queues= with the server");
      throw Error("the DPDK port " + std::to_string(u.port) + " has no link after 5 s; check the cable/switch");
    }
    usleep(10000);
  }
  g_shared[u.text] = s;
  return *s;
}

// One queue of the port and the requests in flight on it. Used by one thread at a time.
class Lane {
 public:
  Lane(Shared& sh, std::uint16_t q, std::uint64_t session, std::uint64_t first_seq)
      : sh_(sh), q_(q), session_(session), table_(kWindow, first_seq) {}
  ~Lane() {
    for (rte_mbuf* m : txq_) rte_pktmbuf_free(m);
    static const bool debug = std::getenv("FARMEM_DPDK_DEBUG") != nullptr;
    if (debug && sent_)
      std::fprintf(stderr, "farmem: dpdk lane %u: %llu sent, %llu retransmitted, %llu not taken by the tx ring, "
                   "%llu without an mbuf\n", q_, static_cast<unsigned long long>(sent_),
                   static_cast<unsigned long long>(retransmits_), static_cast<unsigned long long>(tx_full_),
                   static_cast<unsigned long long>(no_mbuf_));
  }

  // A pool member's lane: a server silent for silence_ns is lost, not fatal.
  void survive(std::uint64_t silence_ns) {
    survive_ = true;
    silence_ns_ = silence_ns;
  }
  // The server of this pool member is lost: nothing sent here will be answered.
  bool lost() const { return survive_ && sh_.dead.load(std::memory_order_acquire); }
  // Completes everything in flight as failed (after lost()).
  template <class F>
  void fail_all(F&& on_done) {
    for (std::uint32_t slot = 0; slot < table_.window(); ++slot)
      if (table_.at(slot).busy) {
        on_done(table_.at(slot), true);
        table_.complete(slot);
      }
    for (rte_mbuf* m : txq_) rte_pktmbuf_free(m);
    txq_.clear();
  }

  // Queues a request; while the window is full, makes progress (completions
  // found meanwhile are handed to on_done(request, failed)). Once the server
  // is lost, the request completes as failed at once.
  template <class F>
  void post(Op op, std::uint64_t off, std::uint32_t size, void* local, std::uint64_t cookie, F&& on_done) {
    while (table_.full() && !lost()) {  // 128 in flight: wait for answers
      flush();
      if (receive(on_done)) continue;
      retransmit_due();
      check_silence();
      sched_yield();
    }
    if (lost()) {
      fail_all(on_done);
      RequestTable::Request r;
      r.cookie = cookie;
      on_done(r, true);
      return;
    }
    if (table_.empty()) heard_ns_ = now_ns();
    transmit(table_.add(op, off, size, local, cookie));
  }

  void flush() {
    std::size_t sent = 0;
    for (int tries = 0; sent < txq_.size() && tries < 4; ++tries)
      sent += rte_eth_tx_burst(sh_.dev.port, q_, txq_.data() + sent, static_cast<std::uint16_t>(txq_.size() - sent));
    // Whatever the ring did not take is dropped like a lost packet: retransmitted on timeout.
    for (std::size_t i = sent; i < txq_.size(); ++i) rte_pktmbuf_free(txq_[i]);
    tx_full_ += txq_.size() - sent;
    txq_.clear();
  }

  // Reads replies; calls on_done(request) for each request that completed.
  template <class F>
  std::size_t receive(F&& on_done) {
    rte_mbuf* bufs[32];
    std::size_t done = 0;
    for (;;) {
      std::uint16_t n = rte_eth_rx_burst(sh_.dev.port, q_, bufs, 32);
      for (std::uint16_t i = 0; i < n; ++i) {
        done += handle(bufs[i], on_done);
        rte_pktmbuf_free(bufs[i]);
      }
      if (n < 32) return done;
    }
  }

  void retransmit_due() {
    const std::uint64_t now = now_ns();
    if (table_.empty() || now < next_check_ns_) return;
    next_check_ns_ = now + 1'000'000;
    std::uint32_t due[64];
    std::size_t n = table_.due(now, due, 64);
    for (std::size_t i = 0; i < n; ++i) {
      transmit(due[i]);
      ++retransmits_;
    }
    if (n) flush();
  }

  void check_silence() {
    const std::uint64_t now = now_ns();
    // A gap of a second between checks means we did not run (stopped, or starved
    // of CPU): the server had no chance to answer, so the silence starts now.
    if (now - checked_ns_ > 1'000'000'000) heard_ns_ = now;
    checked_ns_ = now;
    if (table_.empty() || now - heard_ns_ <= silence_ns_) return;
    if (survive_) return sh_.dead.store(true, std::memory_order_release);
    detail::fatal("the memory server %s has not answered for %llu s (%s); far memory is gone: restart the "
                  "application when the server is back",
                  sh_.uri.text.c_str(), static_cast<unsigned long long>(silence_ns_ / 1'000'000'000ull),
                  link_up(sh_.dev.port) ? "link up, no replies" : "link down");
  }

  bool idle() const { return table_.empty() && txq_.empty(); }
  std::uint64_t heard_ns() const { return heard_ns_; }
  std::uint64_t next_seq() const { return table_.next_seq(); }
  std::uint16_t queue() const { return q_; }
  RequestTable::Request& request(std::uint32_t slot) { return table_.at(slot); }

  // Set by handle() when the server answered with an Error.
  std::string error;
  wire::Errc error_code = wire::Errc::Ok;

 private:
  void transmit(std::uint32_t slot) {
    RequestTable::Request& r = table_.at(slot);
    Header h = make(r.op, session_, r.seq, r.offset, r.size, r.op == Op::Write ? r.size : 0);
    h.floor = table_.floor();
    h.slot = slot;
    h.lane = q_;
    const void* payload = nullptr;
    if (r.op == Op::Write) payload = r.local;
    if (r.op == Op::Hello || r.op == Op::Prove) {
      h.session = 0;
      h.floor = hello_nonce;
      h.length = static_cast<std::uint32_t>(hello_payload.size());
      payload = hello_payload.data();
    }
    h.attempt = table_.sent(slot, now_ns(), kFirstRtoNs, kMaxRtoNs);
    ++sent_;
    if (rte_mbuf* m = build_frame(sh_.pool, sh_.dst, sh_.dev.mac, h, payload)) txq_.push_back(m);
    else ++no_mbuf_;
    // An empty pool is like a lost packet: the timeout sends it again.
  }

  template <class F>
  std::size_t handle(rte_mbuf* m, F&& on_done) {
    if (drop_received()) return 0;
    alignas(64) char scratch[kFrameMax];
    std::size_t len;
    const void* f = frame_bytes(m, scratch, &len);
    Header h;
    const char* payload = nullptr;
    std::string why;
    if (!f || decode(f, len, true, &h, &payload, &why) != Errc::Ok) return 0;  // not ours or corrupt
    if (h.lane != q_) return 0;
    RequestTable::Request* r = table_.match(h.slot, h.seq);
    if (!r) return 0;  // a late duplicate of something already answered
    const bool handshake = r->op == Op::Hello || r->op == Op::Prove;
    if (handshake ? h.floor != hello_nonce : (h.session != session_ && static_cast<Op>(h.op) != Op::Error))
      return 0;
    // Hello is answered by a Challenge, everything else by a Reply (or an Error).
    if (static_cast<Op>(h.op) != Op::Error && (static_cast<Op>(h.op) == Op::Challenge) != (r->op == Op::Hello))
      return 0;
    heard_ns_ = now_ns();
    if (static_cast<Op>(h.op) == Op::Error) {
      error.assign(payload, std::min<std::size_t>(h.length, 200));
      error_code = static_cast<wire::Errc>(h.status);
      if (!handshake && r->op != Op::Bye) {  // a repeated bye finds the session gone
        // A full server is not a failed one: in a pool its pages could not go
        // anywhere else either (placement is fixed), so far memory is full.
        if (static_cast<Errc>(h.status) == Errc::NoCapacity)
          detail::fatal("far memory is full: the memory server %s refused a page: %s", sh_.uri.text.c_str(),
                        error.c_str());
        if (!survive_)
          detail::fatal("the memory server %s refused a request: %s", sh_.uri.text.c_str(), error.c_str());
        sh_.dead.store(true, std::memory_order_release);  // e.g. it forgot our session: lost to this pool
        return 0;
      }
    } else if (r->op == Op::Read) {
      if (h.length != r->size || h.offset != r->offset) return 0;
      std::memcpy(r->local, payload, r->size);
    } else if (handshake) {
      if (h.length != (r->op == Op::Hello ? kChallengeBytes : kProofReplyBytes)) return 0;
      handshake_reply.assign(payload, auth::kNonce);  // the server's nonce, or its proof
    } else if (h.length != 0) {
      return 0;
    }
    reply = h;
    on_done(*r, false);
    table_.complete(h.slot);
    return 1;
  }

 public:
  std::string hello_payload;    // Hello: the client nonce; Prove: client nonce, server nonce, proof
  std::string handshake_reply;  // the Challenge's nonce, then the server's proof
  std::uint64_t hello_nonce = 0;
  Header reply{};  // the last accepted reply (control calls read it)
  std::uint64_t retransmits_ = 0, sent_ = 0, tx_full_ = 0, no_mbuf_ = 0;

 private:
  Shared& sh_;
  std::uint16_t q_;
  std::uint64_t session_;
  RequestTable table_;
  std::vector<rte_mbuf*> txq_;
  std::uint64_t heard_ns_ = 0, next_check_ns_ = 0, checked_ns_ = 0;
  std::uint64_t silence_ns_ = kSilenceNs;
  bool survive_ = false;
};

class DpdkQueuePair final : public QueuePair {
 public:
  DpdkQueuePair(Shared& sh, std::uint16_t q, std::uint64_t session, const MemberOptions* member)
      : sh_(sh), session_(session), lane_(sh, q, session, first_seq(sh, q, session)) {
    if (member) lane_.survive(member->timeout_ns);
  }
  ~DpdkQueuePair() override {
    std::lock_guard<std::mutex> g(sh_.mu);
    sh_.lane_busy[lane_.queue()] = false;
    sh_.lane_session[lane_.queue()] = session_;
    sh_.lane_next_seq[lane_.queue()] = lane_.next_seq();
  }

  void post_read(std::uint64_t off, void* local, std::size_t len, std::uint64_t cookie) override {
    check_len(len);
    lane_.post(Op::Read, off, static_cast<std::uint32_t>(len), local, cookie, collect());
  }
  void post_write(std::uint64_t off, const void* local, std::size_t len, std::uint64_t cookie) override {
    check_len(len);
    lane_.post(Op::Write, off, static_cast<std::uint32_t>(len), const_cast<void*>(local), cookie, collect());
  }
  void submit() override { lane_.flush(); }
  std::size_t poll(Completion* out, std::size_t max) override {
    if (done_.size() == taken_) {
      done_.clear();
      taken_ = 0;
      lane_.flush();
      lane_.receive(collect());
      if (done_.empty()) {
        lane_.retransmit_due();
        lane_.check_silence();
      }
      if (lane_.lost()) lane_.fail_all(collect());
    }
    std::size_t n = 0;
    while (n < max && taken_ < done_.size()) out[n++] = done_[taken_++];
    return n;
  }
  // Polling threads spin; a waiter with nothing to do gives the CPU away so a
  // memory server on the same machine runs (yield while replies are fresh, under
  // 2 ms old, then sleep 50 us at a time).
  void wait(unsigned timeout_us) override {
    if (lane_.idle() || lane_.lost()) return;
    if (now_ns() - lane_.heard_ns() < 2'000'000) {
      sched_yield();
      return;
    }
    timespec ts{0, static_cast<long>(std::min(timeout_us, 50u)) * 1000};
    nanosleep(&ts, nullptr);
  }

 private:
  static std::uint64_t first_seq(Shared& sh, std::uint16_t q, std::uint64_t session) {
    std::lock_guard<std::mutex> g(sh.mu);
    return sh.lane_session[q] == session ? sh.lane_next_seq[q] : 1;
  }
  static void check_len(std::size_t len) {
    if (len == 0 || len > kPage || len % kUnit)
      detail::fatal("the dpdk transport moves a page or 512-byte pieces of one per request, not %zu bytes", len);
  }
  struct Collect {
    std::vector<Completion>* done;
    void operator()(RequestTable::Request& r, bool failed) const { done->push_back({r.cookie, failed}); }
  };
  Collect collect() { return Collect{&done_}; }

  Shared& sh_;
  std::uint64_t session_;
  Lane lane_;
  std::vector<Completion> done_;
  std::size_t taken_ = 0;
};

class DpdkTransport final : public Transport {
 public:
  DpdkTransport(const Config& cfg, const MemberOptions* member)
      : sh_(shared_for(parse_uri(member ? member->uri : cfg.backend, false))),
        member_(member ? std::optional<MemberOptions>(*member) : std::nullopt) {
    std::uint64_t nonce = 0;
    while (nonce == 0) getrandom(&nonce, sizeof nonce, 0);
    // The handshake runs on lane 0 with session 0 (transport/auth.hpp): Hello
    // with our nonce, the server's Challenge, Prove with our proof of the
    // token; the Reply carries the new session and the server's proof. Every
    // answer echoes `nonce` (a stale one on lane 0 cannot pass for it).
    const std::string token = wire::read_client_token(cfg.token_file, kMaxToken);
    unsigned char client_nonce[auth::kNonce];
    auth::random_nonce(client_nonce);
    Lane hello(sh_, 0, 0, 1);
    hello.hello_nonce = nonce;
    const std::uint64_t capacity = member ? member->capacity : cfg.far_mem_bytes;
    auto step = [&](Op op, std::string payload) {  // one handshake request, until answered
      hello.hello_payload = std::move(payload);
      auto noop = [](RequestTable::Request&, bool) {};
      hello.post(op, capacity, sh_.uri.queues, nullptr, 0, noop);
      hello.flush();
      const std::uint64_t t0 = now_ns();
      while (!hello.idle()) {
        hello.receive(noop);
        hello.retransmit_due();
        if (now_ns() - t0 > 5'000'000'000ull)
          throw Error("the memory server " + sh_.uri.text +
                      " did not answer the handshake within 5 s; is it a farmem-server of the same release?");
        sched_yield();
      }
      if (!hello.error.empty()) {
        if (hello.error_code == wire::Errc::BadToken)
          throw Error("the memory server " + sh_.uri.text + " refused us: " + hello.error +
                      "; set FARMEM_TOKEN_FILE to the server's token file");
        throw Error("the memory server " + sh_.uri.text + " refused us: " + hello.error);
      }
    };
    step(Op::Hello, std::string(reinterpret_cast<const char*>(client_nonce), auth::kNonce));
    if (!token.empty() && hello.reply.size == 1)
      throw Error(auth::no_token_refusal(sh_.uri.text));
    const std::string server_nonce = hello.handshake_reply;
    unsigned char proof[auth::kMac];
    auth::prove(token, true, reinterpret_cast<const unsigned char*>(server_nonce.data()), client_nonce, proof);
    step(Op::Prove, std::string(reinterpret_cast<const char*>(client_nonce), auth::kNonce) + server_nonce +
                        std::string(reinterpret_cast<const char*>(proof), auth::kMac));
    if (!token.empty() &&
        !auth::check(token, false, reinterpret_cast<const unsigned char*>(server_nonce.data()), client_nonce,
                     reinterpret_cast<const unsigned char*>(hello.handshake_reply.data())))
      throw Error(auth::unproven_refusal(sh_.uri.text));
    session_ = hello.reply.session;
    capacity_ = hello.reply.offset;
    sh_.dead.store(false, std::memory_order_release);  // a new session on a server that came back
    // Numbering goes on after the hello's seq, so a late copy of its reply matches nothing.
    ctl_ = std::make_unique<Lane>(sh_, 0, session_, hello.next_seq());
    if (member_) ctl_->survive(member_->timeout_ns);
    beat_ = std::thread([this] { heartbeat(); });
  }
  ~DpdkTransport() override { shutdown(); }

  std::unique_ptr<QueuePair> create_qp() override {
    unsigned pick = 0;
    {
      std::lock_guard<std::mutex> g(sh_.mu);
      for (unsigned q = 1; q < sh_.lane_busy.size() && !pick; ++q)
        if (!sh_.lane_busy[q]) {
          sh_.lane_busy[q] = true;
          pick = q;
        }
    }
    if (!pick)
      detail::fatal("more than %u threads use far memory at once over %s; raise queues= in FARMEM_BACKEND "
                    "and in farmem-server --listen",
                    static_cast<unsigned>(sh_.lane_busy.size() - 1), sh_.uri.text.c_str());
    return std::make_unique<DpdkQueuePair>(sh_, static_cast<std::uint16_t>(pick), session_,
                                           member_ ? &*member_ : nullptr);
  }
  void discard(std::uint64_t off, std::uint64_t len) override {
    std::lock_guard<std::mutex> g(mu_);
    for (std::uint64_t done = 0; done < len && ctl_;) {
      std::uint64_t n = std::min<std::uint64_t>(len - done, 1ull << 30) & ~std::uint64_t{kUnit - 1};
      if (n == 0) break;
      call(Op::Discard, off + done, static_cast<std::uint32_t>(n), kSilenceNs);
      done += n;
    }
  }
  std::uint64_t remote_usage() override {
    std::lock_guard<std::mutex> g(mu_);
    if (!ctl_) return 0;
    return call(Op::Usage, 0, 0, kSilenceNs) ? ctl_->reply.offset : 0;
  }
  void shutdown() override {
    {
      std::lock_guard<std::mutex> g(mu_);
      if (!ctl_) return;
      stop_ = true;
    }
    cv_.notify_all();
    if (beat_.joinable()) beat_.join();
    std::lock_guard<std::mutex> g(mu_);
    call(Op::Bye, 0, 0, 1'000'000'000);  // best effort: the server also notices silence or link down
    ctl_.reset();
  }
  std::string describe() const override {
    return sh_.uri.text + " (DPDK port " + sh_.dev.name + ", " + std::to_string(sh_.uri.queues) + " queues)";
  }

 private:
  // One request on the control lane; mu_ held. False if it timed out (only
  // when the limit is shorter than the silence limit, which is fatal).
  bool call(Op op, std::uint64_t off, std::uint32_t size, std::uint64_t limit_ns) {
    auto noop = [](RequestTable::Request&, bool) {};
    ctl_->post(op, off, size, nullptr, 0, noop);
    ctl_->flush();
    const std::uint64_t t0 = now_ns();
    while (!ctl_->idle()) {
      ctl_->receive(noop);
      ctl_->retransmit_due();
      ctl_->check_silence();
      if (ctl_->lost()) {
        ctl_->fail_all(noop);
        return false;
      }
      if (now_ns() - t0 > limit_ns) return false;
      timespec ts{0, 20'000};
      nanosleep(&ts, nullptr);
    }
    return true;
  }

  // Keeps the session alive while the application computes without faulting.
  void heartbeat() {
    std::unique_lock<std::mutex> g(mu_);
    while (!stop_) {
      cv_.wait_for(g, std::chrono::nanoseconds(kHeartbeatNs));
      if (stop_) break;
      call(Op::Ping, 0, 0, kSilenceNs + 1);
    }
  }

  Shared& sh_;
  const std::optional<MemberOptions> member_;  // set: a pool member, which survives its server
  std::uint64_t session_ = 0, capacity_ = 0;
  std::unique_ptr<Lane> ctl_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread beat_;
};

}  // namespace

std::unique_ptr<Transport> connect_dpdk(const Config& cfg) { return std::make_unique<DpdkTransport>(cfg, nullptr); }

std::unique_ptr<Transport> connect_dpdk_member(const Config& cfg, const MemberOptions& member) {
  return std::make_unique<DpdkTransport>(cfg, &member);
}

}  // namespace farmem::net
