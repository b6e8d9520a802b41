// Choosing and starting the transport named by FARMEM_BACKEND, and starting it
// late: a process that never sends a page far (a wrapper script, a small tool
// under farmem-run) should start no memory server and open no session. The
// deferred transport connects on the first transfer; until then nothing is far,
// so there is nothing to read, discard or snapshot at fork.
#include <atomic>
#include <mutex>
#include <string_view>

#include "farmem/runtime.hpp"
#include "farmem_build_config.h"
#include "transport/dpdk/dpdk_transport.hpp"
#include "transport/file/file_transport.hpp"
#include "transport/queue_pair.hpp"
#include "transport/rdma/rdma_logic.hpp"
#include "transport/rdma/rdma_transport.hpp"
#include "transport/redis/redis_transport.hpp"
#include "transport/shm/shm_transport.hpp"
#include "transport/tcp/tcp_transport.hpp"
#include "runtime/fatal.hpp"
#include "tier/compressed.hpp"
#include "tier/protected.hpp"
#include "tier/pool.hpp"

namespace farmem::net {
namespace {

// Every backend scheme: what a URI starts with ("shm" is the whole URI), the
// form messages show (none: not offered), and whether it can be a pool member.
struct Scheme {
  std::string_view prefix;
  const char* form;
  bool member;
  bool matches(const std::string& uri) const {
    return prefix.ends_with("://") ? uri.starts_with(prefix) : uri == prefix;
  }
};
constexpr Scheme kSchemes[] = {
    {"shm", "shm", false},
    {"tcp://", "tcp://HOST:PORT", true},
    {"tcp+tls://", "tcp+tls://HOST:PORT", true},
    {"redis://", "redis://HOST:PORT", true},
    {"redis+cluster://", "redis+cluster://HOST:PORT,...", true},
    {"rediss://", nullptr, false},  // known, so connect() can say why it is not supported
    {"rdma://", "rdma://HOST:PORT", true},
    {"dpdk://", "dpdk://...", true},
    {"file://", "file:///PATH", true},
};

std::string forms(bool members_only) {
  std::string out;
  for (const Scheme& s : kSchemes) {
    if (!s.form || (members_only && !s.member)) continue;
    if (!out.empty()) out += ", ";
    out += s.form;
  }
  return out;
}

std::unique_ptr<Transport> connect_now(const Config& cfg) {
  if (tier::is_pool(cfg)) return tier::connect_pool(cfg);  // several servers, or redundancy
  if (cfg.backend == "shm") return connect_shm(cfg);
  if (cfg.backend.rfind("tcp://", 0) == 0 || cfg.backend.rfind("tcp+tls://", 0) == 0) return connect_tcp(cfg);
  if (cfg.backend.rfind("file://", 0) == 0) return connect_file(cfg);
  if (cfg.backend.rfind("redis://", 0) == 0 || cfg.backend.rfind("redis+cluster://", 0) == 0) return connect_redis(cfg);
  if (cfg.backend.rfind("rediss://", 0) == 0)
    throw Error("FARMEM_BACKEND=rediss://...: TLS to Redis needs hiredis 1.0 or later built with SSL (this build has "
                "hiredis 0.14); use redis:// on a trusted network or through a TLS tunnel (stunnel, spiped)");
  if (cfg.backend.rfind("rdma://", 0) == 0) {
#if FARMEM_HAVE_RDMA
    return connect_rdma(cfg);
#else
    rdma::parse_uri(cfg.backend, false, "FARMEM_BACKEND");  // a bad URI is named first
    throw Error("FARMEM_BACKEND=" + cfg.backend +
                ": this farmem was built without rdma-core; install libibverbs-dev and librdmacm-dev and "
                "rebuild (meson setup -Drdma=enabled), or use tcp://HOST:PORT");
#endif
  }
  if (cfg.backend.rfind("dpdk://", 0) == 0) {
#if FARMEM_HAVE_DPDK
    return connect_dpdk(cfg);
#else
    throw Error("FARMEM_BACKEND=" + cfg.backend + ": this farmem was built without DPDK (libdpdk-dev missing at "
                "configure time); install it and rebuild with -Ddpdk=enabled, or use shm or tcp://HOST:PORT");
#endif
  }
  throw Error("unknown backend '" + cfg.backend + "'; use " + backend_forms());
}

}  // namespace

std::uint32_t io_unit(const Config& cfg) {
  // shm and rdma move bytes; the others carry 512-byte units (wire::kUnit for
  // tcp and dpdk, the O_DIRECT block for file, and so on).
  if (cfg.backend == "shm" || cfg.backend.rfind("rdma://", 0) == 0) return 1;
  return 512;
}

bool names_backend(const std::string& backend) {
  for (const Scheme& s : kSchemes)
    if (s.matches(backend)) return true;
  return false;
}

std::string backend_forms() { return forms(false); }

std::string member_refusal(const std::string& uri) {
  for (const Scheme& s : kSchemes)
    if (s.member && s.matches(uri)) return {};
  return "'" + uri + "' cannot be a pool member; a pool's servers are " + forms(true) +
         " (a redis+cluster:// URI in an @FILE, one URI a line)";
}

std::unique_ptr<Transport> connect_member(const Config& cfg, const MemberOptions& member) {
  if (std::string no = member_refusal(member.uri); !no.empty()) throw Error(no);
  if (member.uri.rfind("redis://", 0) == 0 || member.uri.rfind("redis+cluster://", 0) == 0)
    return connect_redis_member(cfg, member);
  if (member.uri.rfind("dpdk://", 0) == 0) {
#if FARMEM_HAVE_DPDK
    return connect_dpdk_member(cfg, member);
#else
    throw Error("'" + member.uri + "': this farmem was built without DPDK; use tcp:// pool members");
#endif
  }
  if (member.uri.rfind("file://", 0) == 0) return connect_file_member(cfg, member);
  if (member.uri.rfind("rdma://", 0) == 0) {
#if FARMEM_HAVE_RDMA
    return connect_rdma_member(cfg, member);
#else
    rdma::parse_uri(member.uri, false, "FARMEM_BACKEND (a pool member)");  // a bad URI is named first
    throw Error("'" + member.uri + "': this farmem was built without rdma-core; install libibverbs-dev and "
                "librdmacm-dev and rebuild (meson setup -Drdma=enabled), or use tcp:// pool members");
#endif
  }
  return connect_tcp_member(cfg, member);
}

namespace {

class DeferredTransport;

// A queue pair whose real one is made on its first post. Before that it has
// nothing in flight: poll finds nothing, submit and wait have nothing to do.
class DeferredQueuePair final : public QueuePair {
 public:
  explicit DeferredQueuePair(DeferredTransport& t) : t_(t) {}
  void post_read(std::uint64_t off, void* local, std::size_t len, std::uint64_t cookie) override {
    real().post_read(off, local, len, cookie);
  }
  void post_write(std::uint64_t off, const void* local, std::size_t len, std::uint64_t cookie) override {
    real().post_write(off, local, len, cookie);
  }
  void submit() override {
    if (qp_) qp_->submit();
  }
  std::size_t poll(Completion* out, std::size_t max) override { return qp_ ? qp_->poll(out, max) : 0; }
  void wait(unsigned timeout_us) override {
    if (qp_) qp_->wait(timeout_us);
  }

 private:
  QueuePair& real();
  DeferredTransport& t_;
  std::unique_ptr<QueuePair> qp_;
};

class DeferredTransport final : public Transport {
 public:
  explicit DeferredTransport(const Config& cfg) : cfg_(cfg) {}

  // The real transport, connecting now if nothing has yet. A failure here ends
  // the program with one line: a page is waiting to go far and cannot.
  Transport& real() {
    if (Transport* t = real_.load(std::memory_order_acquire)) return *t;
    std::lock_guard<std::mutex> g(mu_);
    if (Transport* t = real_.load(std::memory_order_relaxed)) return *t;
    if (shut_) detail::fatal("far memory used after the runtime shut down");
    try {
      owned_ = connect_now(cfg_);
      if (local_len_) owned_->register_local(local_, local_len_);
    } catch (const Error& e) {
      detail::fatal("%s", e.what());
    }
    real_.store(owned_.get(), std::memory_order_release);
    return *owned_;
  }

  std::unique_ptr<QueuePair> create_qp() override {
    if (Transport* t = real_.load(std::memory_order_acquire)) return t->create_qp();
    return std::make_unique<DeferredQueuePair>(*this);
  }
  void discard(std::uint64_t off, std::uint64_t len) override {
    if (Transport* t = real_.load(std::memory_order_acquire)) t->discard(off, len);
  }
  std::uint64_t remote_usage() override {
    Transport* t = real_.load(std::memory_order_acquire);
    return t ? t->remote_usage() : 0;
  }
  void sync_discards() override {
    if (Transport* t = real_.load(std::memory_order_acquire)) t->sync_discards();
  }
  void shutdown() override {
    std::lock_guard<std::mutex> g(mu_);
    shut_ = true;
    if (owned_) owned_->shutdown();
  }
  std::string describe() const override {
    Transport* t = real_.load(std::memory_order_acquire);
    return t ? t->describe() : cfg_.backend + " (not started: nothing has gone far)";
  }
  std::string stats_json() const override {
    Transport* t = real_.load(std::memory_order_acquire);
    return t ? t->stats_json() : std::string();
  }
  std::vector<ServerBytes> per_server() const override {
    Transport* t = real_.load(std::memory_order_acquire);
    return t ? t->per_server() : std::vector<ServerBytes>();
  }
  bool connected() const override { return real_.load(std::memory_order_acquire) != nullptr; }
  void register_local(void* base, std::size_t len) override {
    local_ = base;
    local_len_ = len;
  }
  // The lock is held across fork, so the child never sees a half-made connection.
  bool fork_prepare() override {
    mu_.lock();
    return owned_ ? owned_->fork_prepare() : false;
  }
  void fork_parent() override {
    if (owned_) owned_->fork_parent();
    mu_.unlock();
  }
  void fork_child() override {
    if (owned_) owned_->fork_child();
    mu_.unlock();
  }

 private:
  Config cfg_;
  std::mutex mu_;
  std::atomic<Transport*> real_{nullptr};
  std::unique_ptr<Transport> owned_;
  bool shut_ = false;
  void* local_ = nullptr;
  std::size_t local_len_ = 0;
};

QueuePair& DeferredQueuePair::real() {
  if (!qp_) qp_ = t_.real().create_qp();
  return *qp_;
}

}  // namespace

// The codec layers over the transport: compress, then encrypt. With both, the
// compressed tier seals its own pieces; protect_transport then adds nothing.
static std::unique_ptr<Transport> layered(const Config& cfg, std::unique_ptr<Transport> t) {
  return tier::protect_transport(cfg, tier::compress_transport(cfg, std::move(t)));
}

std::unique_ptr<Transport> connect(const Config& cfg) {
  // rdma registers (and may pin) the frame pool at start, and the transparent
  // region must know whether it did: it starts at once.
  if (!cfg.lazy_connect || cfg.backend.rfind("rdma://", 0) == 0)
    return layered(cfg, connect_now(cfg));
  if (cfg.backend == "shm") check_shm(cfg);  // a missing server binary is named now, not at the first eviction
  return layered(cfg, std::make_unique<DeferredTransport>(cfg));
}

void probe(const Config& cfg) {
  if (cfg.backend == "shm") return check_shm(cfg);
  std::unique_ptr<Transport> t = connect_now(cfg);
  t->shutdown();
}

}  // namespace farmem::net
