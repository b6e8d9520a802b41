// The DPDK memory server (dpdk://): one polling thread serving every port and
// lane. memif: one server interface per id (one client each); port/N: one NIC
// port shared by sessions. A session is a far region of its own, created by a
// Prove of the token (Hello, Challenge, Prove: the token is never sent; the
// challenge is derived from a secret of the server's, the client's nonce and
// MAC and a 30 s epoch, so the server keeps no state per handshake and a
// retransmitted hello gets the same challenge) and freed on Bye, when its memif link goes down,
// or after 10 s without a packet (clients send a heartbeat every second).
// Writes and discards execute once per (session, lane, seq) and are
// re-acknowledged when repeated; reads answer with the current bytes.
// Malformed packets are counted and dropped. Every 100 ms it takes the main
// thread's requests (listener.cc: print a usage line, stop). Idle, it yields
// and then sleeps.
#include "transport/dpdk/dpdk_server.hpp"

#include <sched.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <time.h>

#include <rte_ethdev.h>
#include <rte_mbuf.h>

#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <vector>

#include "farmem/runtime.hpp"
#include "transport/dpdk/dpdk_port.hpp"
#include "transport/auth.hpp"
#include "transport/dpdk/dpdk_proto.hpp"
#include "runtime/os.hpp"
#include "server/session_memory.hpp"

namespace farmem::server {
namespace {

using namespace net::dpdk;
using farmem::detail::now_ns;

constexpr std::uint64_t kSessionIdleNs = 10'000'000'000;
constexpr std::uint64_t kChallengeEpochNs = 30'000'000'000;  // a challenge is good for 30-60 s

struct Session {
  std::uint64_t id = 0, nonce = 0;
  unsigned port = 0;  // index into ports_
  std::uint8_t mac[6] = {};
  std::unique_ptr<SessionMemory> mem;
  std::string full;  // set when a write did not fit: every later request gets it (retransmits too)
  unsigned queues = 0;
  std::vector<DedupWindow> lanes;
  std::uint64_t heard_ns = 0;
};

struct PortState {
  Device dev;
  bool up = false;
  unsigned active = 1;  // memif: lanes the connected client set up (queue 0 until its hello)
  std::vector<std::vector<rte_mbuf*>> out;  // replies per lane
};

class Server {
 public:
  Server(const DpdkServerOptions& o, ListenerContext& ctx) : opt_(o), ctx_(ctx) { net::auth::random_nonce(secret_); }
  int run();

 private:
  std::size_t poll_port(unsigned p, unsigned q);
  void handle(unsigned p, unsigned q, rte_mbuf* m);
  void send(unsigned p, unsigned q, const std::uint8_t dst[6], Header h, const void* payload);
  // Sends r as the answer to req: with the fields the client matches replies on
  // (slot, lane, attempt, floor) copied from req.
  void answer(unsigned p, unsigned q, const std::uint8_t dst[6], const Header& req, Header r, const void* payload);
  void fail(unsigned p, unsigned q, const std::uint8_t dst[6], const Header& req, Errc e, const std::string& msg);
  void free_session(std::uint64_t id, const char* why);
  // The challenge for a client nonce from (port, MAC) in an epoch.
  void challenge(const char* client_nonce, const std::uint8_t mac[6], unsigned port, std::uint64_t epoch,
                 unsigned char* out) const;
  void housekeeping(std::uint64_t now);
  void print_usage(const char* why);

  bool start();
  void stop_ports();

  DpdkServerOptions opt_;
  ListenerContext& ctx_;
  unsigned char secret_[net::auth::kNonce];  // the challenges' key, new each start
  Uri uri_;
  rte_mempool* pool_ = nullptr;
  std::vector<PortState> ports_;
  std::map<std::uint64_t, std::unique_ptr<Session>> sessions_;
  std::uint64_t malformed_ = 0, duplicates_ = 0, stale_ = 0, injected_drops_ = 0, expired_ = 0, tx_dropped_ = 0;
};

void Server::print_usage(const char* why) {
  std::uint64_t used = 0;  // a dpdk session's lease is what it holds: granted_bytes is the same
  unsigned up = 0;
  for (auto& [id, s] : sessions_) {
    used += s->mem->used_bytes();
  }
  for (auto& p : ports_) up += p.up;
  std::printf("%s,\"clients\":%zu,\"links_up\":%u,\"used_bytes\":%llu,"
              "\"granted_bytes\":%llu,\"capacity_bytes\":%llu,\"duplicates\":%llu,\"stale\":%llu,"
              "\"malformed\":%llu,\"expired\":%llu,\"injected_drops\":%llu,\"tx_dropped\":%llu}\n",
              usage_head(why, "dpdk", ctx_, opt_.uri).c_str(), sessions_.size(), up,
              static_cast<unsigned long long>(used), static_cast<unsigned long long>(used),
              static_cast<unsigned long long>(ctx_.account.capacity()),
              static_cast<unsigned long long>(duplicates_), static_cast<unsigned long long>(stale_),
              static_cast<unsigned long long>(malformed_), static_cast<unsigned long long>(expired_),
              static_cast<unsigned long long>(injected_drops_), static_cast<unsigned long long>(tx_dropped_));
  std::fflush(stdout);
}

void Server::send(unsigned p, unsigned q, const std::uint8_t dst[6], Header h, const void* payload) {
  if (rte_mbuf* m = build_frame(pool_, dst, ports_[p].dev.mac, h, payload)) ports_[p].out[q].push_back(m);
  // An empty pool drops the reply; the client retransmits.
}

void Server::fail(unsigned p, unsigned q, const std::uint8_t dst[6], const Header& req, Errc e,
                  const std::string& msg) {
  Header h = make(Op::Error, req.session, req.seq, req.offset, 0, static_cast<std::uint32_t>(msg.size()));
  h.status = static_cast<std::uint32_t>(e);
  answer(p, q, dst, req, h, msg.data());
}

void Server::answer(unsigned p, unsigned q, const std::uint8_t dst[6], const Header& req, Header r,
                    const void* payload) {
  r.slot = req.slot;
  r.lane = req.lane;
  r.attempt = req.attempt;
  r.floor = req.floor;
  send(p, q, dst, r, payload);
}

void Server::challenge(const char* client_nonce, const std::uint8_t mac[6], unsigned port, std::uint64_t epoch,
                       unsigned char* out) const {
  unsigned char bound[net::auth::kNonce + 6 + 4 + 8];
  std::memcpy(bound, client_nonce, net::auth::kNonce);
  std::memcpy(bound + net::auth::kNonce, mac, 6);
  const std::uint32_t p32 = port;
  std::memcpy(bound + net::auth::kNonce + 6, &p32, 4);
  std::memcpy(bound + net::auth::kNonce + 10, &epoch, 8);
  net::auth::derive_nonce(secret_, bound, sizeof bound, out);
}

void Server::free_session(std::uint64_t id, const char* why) {
  auto it = sessions_.find(id);
  if (it == sessions_.end()) return;
  Session& s = *it->second;
  std::printf("farmem-server: session %016llx ended (%s), %llu MiB reclaimed\n", static_cast<unsigned long long>(id),
              why, static_cast<unsigned long long>(s.mem->used_bytes() >> 20));
  std::fflush(stdout);
  sessions_.erase(it);
}

void Server::handle(unsigned p, unsigned q, rte_mbuf* m) {
  if (drop_received()) {
    ++injected_drops_;
    return;
  }
  alignas(64) char scratch[kFrameMax];
  std::size_t len;
  const void* f = frame_bytes(m, scratch, &len);
  Header h;
  const char* payload = nullptr;
  std::uint8_t src[6] = {};
  frame_source(m, src);
  if (!f) {
    ++malformed_;
    return;
  }
  Errc e = decode(f, len, false, &h, &payload, nullptr);
  if (e != Errc::Ok) {
    ++malformed_;
    return;  // garbage gets no answer: we cannot trust its fields to address one
  }
  if (h.lane != q) {
    ++malformed_;
    return;
  }
  const auto op = static_cast<Op>(h.op);
  if (op == Op::Hello) {  // answered with a challenge; size 1: no token here to prove
    unsigned char nonce[net::auth::kNonce];
    challenge(payload, src, p, now_ns() / kChallengeEpochNs, nonce);
    return answer(p, q, src, h, make(Op::Challenge, 0, h.seq, 0, ctx_.token.empty() ? 1 : 0, kChallengeBytes), nonce);
  }
  if (op == Op::Prove) {
    const auto* client_nonce = reinterpret_cast<const unsigned char*>(payload);
    const unsigned char* server_nonce = client_nonce + net::auth::kNonce;
    const unsigned char* proof = server_nonce + net::auth::kNonce;
    unsigned char want[net::auth::kNonce];
    bool ours = false;
    for (std::uint64_t back = 0, epoch = now_ns() / kChallengeEpochNs; back < 2 && !ours && epoch >= back; ++back) {
      challenge(payload, src, p, epoch - back, want);
      ours = net::auth::equal(want, server_nonce);
    }
    if (!ours) return fail(p, q, src, h, Errc::BadToken, "a challenge this server did not give, or gave too long ago");
    if (!ctx_.token.empty() && !net::auth::check(ctx_.token, true, server_nonce, client_nonce, proof))
      return fail(p, q, src, h, Errc::BadToken, "wrong or missing token");
    // The queue count must match: memif maps a queue the peer never set up onto
    // its ring 0, and DPDK's API cannot tell which rings a peer set up.
    if (h.size != uri_.queues)
      return fail(p, q, src, h, Errc::BadQueues,
                  "the server has " + std::to_string(uri_.queues) + " queue pairs and this client " +
                      std::to_string(h.size) + "; use queues=" + std::to_string(uri_.queues) + " in FARMEM_BACKEND");
    Session* s = nullptr;
    for (auto& [id, cand] : sessions_)
      if (cand->nonce == h.floor && cand->port == p) s = cand.get();  // a repeated hello
    if (!s) {
      std::string refusal;
      char client[40];  // the client's MAC and the port it came in on
      std::snprintf(client, sizeof client, "%02x:%02x:%02x:%02x:%02x:%02x port %u", src[0], src[1], src[2], src[3],
                    src[4], src[5], p);
      auto mem = SessionMemory::map(ctx_.account, h.offset, client, &refusal);
      if (!mem) return fail(p, q, src, h, Errc::NoCapacity, refusal);
      if (uri_.memif)  // one client per memif interface: a new hello replaces a stale session
        for (auto it = sessions_.begin(); it != sessions_.end();) {
          auto next = std::next(it);
          if (it->second->port == p) free_session(it->first, "replaced by a new client on its memif id");
          it = next;
        }
      auto ns = std::make_unique<Session>();
      do getrandom(&ns->id, sizeof ns->id, 0); while (ns->id == 0 || sessions_.count(ns->id));
      ns->nonce = h.floor;
      ns->port = p;
      std::memcpy(ns->mac, src, 6);
      ns->mem = std::move(mem);
      ns->queues = h.size;
      ns->lanes.assign(h.size, DedupWindow(kWindow));
      s = ns.get();
      sessions_[ns->id] = std::move(ns);
      if (uri_.memif) ports_[p].active = s->queues;
    }
    s->heard_ns = now_ns();
    unsigned char body[kProofReplyBytes] = {};  // the server's proof, then zeros to a whole unit
    net::auth::prove(ctx_.token, false, server_nonce, client_nonce, body);
    return answer(p, q, src, h, make(Op::Reply, s->id, h.seq, s->mem->size(), 0, kProofReplyBytes), body);
  }
  auto it = sessions_.find(h.session);
  if (it == sessions_.end() || it->second->port != p)
    return fail(p, q, src, h, Errc::NoSession,
                "no such session (the server forgets a client after 10 s of silence)");
  Session& s = *it->second;
  if (h.lane >= s.queues) return fail(p, q, src, h, Errc::BadMessage, "lane beyond the session's queues");
  s.heard_ns = now_ns();
  if (!s.full.empty() && op != Op::Bye) return fail(p, q, src, h, Errc::NoCapacity, s.full);
  if ((op == Op::Read || op == Op::Write || op == Op::Discard) && !s.mem->in_range(h.offset, h.size))
    return fail(p, q, src, h, Errc::OutOfRange, "range outside the session's far memory");
  DedupWindow::Verdict v = s.lanes[h.lane].check(h.seq, h.floor);
  if (v == DedupWindow::Verdict::Stale) {
    ++stale_;
    return;  // the client already has the answer
  }
  if (v == DedupWindow::Verdict::Invalid)
    return fail(p, q, src, h, Errc::BadMessage, "seq outside the window of requests in flight");
  const bool first = v == DedupWindow::Verdict::Execute;
  if (!first) ++duplicates_;
  Header r = make(Op::Reply, s.id, h.seq, h.offset, h.size, 0);
  const void* data = nullptr;
  switch (op) {
    case Op::Read:
      r.length = h.size;
      data = s.mem->base() + h.offset;
      if (first) s.mem->note_read(h.size);
      break;
    case Op::Write:
      if (first) {
        if (!s.mem->charge_write(h.offset, h.size, &s.full)) return fail(p, q, src, h, Errc::NoCapacity, s.full);
        std::memcpy(s.mem->base() + h.offset, payload, h.size);
      }
      break;
    case Op::Discard:
      if (first) s.mem->discard(h.offset, h.size);
      break;
    case Op::Usage:
      r.offset = s.mem->used_bytes();
      break;
    case Op::Ping:
      break;
    case Op::Bye:
      answer(p, q, src, h, r, nullptr);
      free_session(s.id, "said goodbye");
      return;
    default:
      return fail(p, q, src, h, Errc::BadMessage, "unexpected op");
  }
  answer(p, q, src, h, r, data);
}

std::size_t Server::poll_port(unsigned p, unsigned q) {
  PortState& ps = ports_[p];
  rte_mbuf* bufs[32];
  std::uint16_t n = rte_eth_rx_burst(ps.dev.port, static_cast<std::uint16_t>(q), bufs, 32);
  for (std::uint16_t i = 0; i < n; ++i) {
    handle(p, q, bufs[i]);
    rte_pktmbuf_free(bufs[i]);
  }
  auto& out = ps.out[q];
  if (out.empty()) return n;
  std::size_t sent = rte_eth_tx_burst(ps.dev.port, static_cast<std::uint16_t>(q), out.data(),
                                      static_cast<std::uint16_t>(out.size()));
  out.erase(out.begin(), out.begin() + static_cast<std::ptrdiff_t>(sent));
  // A full ring (the client is not polling right now) keeps replies for the next
  // round; beyond two windows they are dropped and the client retransmits.
  while (out.size() > 2 * kWindow) {
    rte_pktmbuf_free(out.front());
    out.erase(out.begin());
    ++tx_dropped_;
  }
  return n + (out.empty() ? 0 : 1);
}

void Server::housekeeping(std::uint64_t now) {
  for (unsigned p = 0; p < ports_.size(); ++p) {
    bool up = link_up(ports_[p].dev.port);
    if (ports_[p].up && !up && uri_.memif) {  // the client behind this memif id is gone
      for (auto it = sessions_.begin(); it != sessions_.end();) {
        auto next = std::next(it);
        if (it->second->port == p) free_session(it->first, "memif link down");
        it = next;
      }
      ports_[p].active = 1;
      for (auto& out : ports_[p].out) {
        for (rte_mbuf* m : out) rte_pktmbuf_free(m);
        out.clear();
      }
    }
    ports_[p].up = up;
  }
  for (auto it = sessions_.begin(); it != sessions_.end();) {
    auto next = std::next(it);
    if (now - it->second->heard_ns > kSessionIdleNs) {
      ++expired_;
      free_session(it->first, "silent for 10 s");
    }
    it = next;
  }
}

bool Server::start() {
  try {
    uri_ = parse_uri(opt_.uri, true);
    eal_init_once(uri_, "farmem-server");
    const unsigned nports = uri_.memif ? uri_.clients : 1;
    pool_ = make_pool("farmem_server", 2048 + 64 * uri_.queues * nports);
    ports_.resize(nports);
    for (unsigned p = 0; p < nports; ++p) {
      ports_[p].dev = open_device(uri_, true, p, pool_);
      ports_[p].out.resize(uri_.queues);
      if (!uri_.memif) ports_[p].active = uri_.queues;
    }
  } catch (const Error& e) {
    std::string why = e.what();
    if (why.rfind("farmem-server: ", 0) == 0) why.erase(0, 15);
    std::fprintf(stderr, "farmem-server: --listen %s: %s\n", opt_.uri.c_str(), why.c_str());
    return false;
  }
  const auto& mac = ports_[0].dev.mac;
  std::printf("farmem-server: listening on %s (%s, %u queues, MAC %02x:%02x:%02x:%02x:%02x:%02x), capacity %llu MiB, "
              "token %s\n",
              opt_.uri.c_str(),
              uri_.memif ? ("memif ids 0-" + std::to_string(uri_.clients - 1)).c_str() : ports_[0].dev.name.c_str(),
              uri_.queues, mac[0], mac[1], mac[2], mac[3], mac[4], mac[5],
              static_cast<unsigned long long>(ctx_.account.capacity() >> 20),
              ctx_.token.empty() ? "not required" : "required");
  std::fflush(stdout);
  return true;
}

void Server::stop_ports() {
  for (auto& p : ports_) rte_eth_dev_stop(p.dev.port);
}

int Server::run() {
  const bool listening = start();
  if (!ctx_.control.started(listening)) {
    if (listening) stop_ports();
    return listening ? 0 : 1;
  }
  std::uint64_t last_house = 0, last_packet = now_ns();
  for (unsigned round = 0;; ++round) {
    bool busy = false;
    for (unsigned p = 0; p < ports_.size(); ++p) {
      if (!ports_[p].up) continue;
      // Only lanes the client set up: memif maps a queue it never announced onto ring 0.
      for (unsigned q = 0; q < ports_[p].active; ++q) busy |= poll_port(p, q) > 0;
    }
    const std::uint64_t now = now_ns();
    if (busy) last_packet = now;
    if ((round & 255) == 0 || !busy) {
      if (now - last_house > 100'000'000) {
        last_house = now;
        housekeeping(now);
        Control::Requests r = ctx_.control.take();
        if (r.usage) print_usage("usage");
        if (r.stop) {
          while (!sessions_.empty()) free_session(sessions_.begin()->first, "server shutting down");
          print_usage("exit");
          stop_ports();
          return 0;
        }
      }
    }
    if (!busy) {  // idle: give the CPU away, more so the longer nothing comes
      const std::uint64_t quiet = now - last_packet;
      if (quiet < 2'000'000) {
        sched_yield();
      } else {
        timespec ts{0, quiet < 100'000'000 ? 20'000 : 1'000'000};
        nanosleep(&ts, nullptr);
      }
    }
  }
}

}  // namespace

int run_dpdk(const DpdkServerOptions& opt, ListenerContext& ctx) {
  Server s(opt, ctx);
  return s.run();
}

}  // namespace farmem::server
