// The redis:// and redis+cluster:// transport: far pages live as values in
// Redis, one key per 4 KiB page under this run's own prefix (redis_logic.hpp,
// docs/redis.md). The pieces: shared.hpp (the nodes, the slot map, recovery
// after a broken connection or a failover), queue_pair.cc (a core's pipelined
// connections), control.cc (removing keys: far frees, the clean-up at exit)
// and reaper.cc (a process that removes them if ours ends without that:
// killed, or under farmem-run, whose programs leave far memory in place).
// A Redis that stays away, restarted without a replica copy, full or silent
// ends the process with one line, as the other transports do.
#include "transport/redis/redis_transport.hpp"

#include <unistd.h>

#include <atomic>
#include <ctime>
#include <mutex>
#include <string>

#include "farmem/runtime.hpp"
#include "runtime/fatal.hpp"
#include "runtime/runtime.hpp"
#include "transport/redis/control.hpp"
#include "transport/redis/queue_pair.hpp"
#include "transport/redis/reaper.hpp"
#include "transport/redis/shared.hpp"

namespace farmem::net {
namespace {

using redis::kPageSize;

class RedisTransport final : public Transport {
 public:
  RedisTransport(const Config& cfg, const MemberOptions* member) {
    // Ordinary memory under the preload shim: the reaper reads these strings in a
    // copy of this process where the transparent region is not served.
    detail::InternalAlloc internal;
    s_.uri = redis::parse_uri(member ? member->uri : cfg.backend);
    s_.survive = member != nullptr;
    if (!cfg.redis_auth_file.empty()) redis::read_auth_file(cfg.redis_auth_file, s_.uri.user, s_.uri.password);
    if (cfg.server_timeout_ms) s_.silence_ns = cfg.server_timeout_ms * 1000000ull;
    if (member && member->timeout_ns) s_.silence_ns = member->timeout_ns;
    char host[256] = "host";
    gethostname(host, sizeof host - 1);
    for (char* p = host; *p; ++p)
      if (*p == '{' || *p == '}' || *p == '*' || *p == ' ') *p = '_';  // keep the hash tag and patterns whole
    // Microseconds: an exec keeps the pid, and the image before it may still have a reaper at work.
    // Unique within the process too: a pool's members start in the same microsecond.
    static std::atomic<std::uint64_t> last_start{0};
    timespec now{};
    clock_gettime(CLOCK_REALTIME, &now);
    std::uint64_t start = static_cast<std::uint64_t>(now.tv_sec) * 1000000 + now.tv_nsec / 1000;
    for (std::uint64_t prev = last_start.load(); !last_start.compare_exchange_weak(prev, std::max(start, prev + 1));) {
    }
    start = last_start.load();
    s_.prefix = redis::key_prefix(host, getpid(), start);
    // Offsets may reach past far_mem_bytes by a codec's packing: room for twice it.
    std::uint64_t far = cfg.far_mem_bytes ? cfg.far_mem_bytes : 64ull << 30;
    s_.npages = (2 * far + kPageSize - 1) / kPageSize;
    s_.map_memory();
    try {
      s_.wait_setting = cfg.redis_wait;
      const long long replicas = s_.discover();
      if (cfg.redis_wait < 0) {
        s_.wait_replicas = replicas > 0 ? 1 : 0;
      } else {
        s_.wait_replicas = static_cast<unsigned>(cfg.redis_wait);
        if (replicas >= 0 && s_.wait_replicas > replicas)
          throw Error("FARMEM_REDIS_WAIT=" + std::to_string(cfg.redis_wait) + " but " +
                      (s_.uri.cluster ? "a master of the Redis Cluster at " : "Redis at ") + s_.uri.shown + " has " +
                      std::to_string(replicas) + " connected replicas; add replicas or lower FARMEM_REDIS_WAIT");
      }
    } catch (...) {
      s_.unmap_memory();
      throw;
    }
    reaper_.start(s_);
  }
  ~RedisTransport() override {
    shutdown();
    s_.unmap_memory();
  }

  std::unique_ptr<QueuePair> create_qp() override { return redis::make_queue_pair(s_); }
  void discard(std::uint64_t off, std::uint64_t len) override {
    std::lock_guard<std::mutex> g(mu_);
    if (closed_ || child_) return;
    std::vector<std::uint64_t> pages;
    // Only whole pages are dropped: a part of one may still hold another piece.
    for (std::uint64_t p = (off + kPageSize - 1) / kPageSize; (p + 1) * kPageSize <= off + len; ++p)
      if (s_.unmark(p)) pages.push_back(p);
    ctl_.unlink(pages);  // false: a member's lost Redis, whose keys went with it
  }
  std::uint64_t remote_usage() override { return s_.keys.load(std::memory_order_relaxed) * kPageSize; }
  void shutdown() override {
    std::lock_guard<std::mutex> g(mu_);
    if (closed_) return;
    closed_ = true;
    if (!child_) ctl_.unlink_all();  // a forked child leaves its parent's pages alone
    ctl_.close();
  }
  std::string describe() const override { return s_.uri.shown; }
  std::string stats_json() const override {
    return "\"redis\":{\"reads\":" + std::to_string(s_.reads.load()) + ",\"writes\":" +
           std::to_string(s_.writes.load()) + ",\"keys\":" + std::to_string(s_.keys.load()) +
           ",\"waits\":" + std::to_string(s_.waits.load()) + ",\"wait_replicas\":" +
           std::to_string(s_.wait_replicas) + ",\"reconnects\":" + std::to_string(s_.reconnects.load()) +
           ",\"redirects\":" + std::to_string(s_.redirects.load()) + ",\"failovers\":" +
           std::to_string(s_.failovers.load()) + ",\"nodes\":" +
           std::to_string(s_.view ? s_.view->nodes.load() : 0) + "}";
  }
  // A child cannot read our pages (fork_prepare says so); it must not remove them at its exit.
  void fork_child() override { child_ = true; }

 private:
  redis::Shared s_;
  redis::Reaper reaper_;
  redis::Control ctl_{s_};  // discard and the clean-up at exit
  std::mutex mu_;
  bool closed_ = false;
  bool child_ = false;
};

}  // namespace

std::unique_ptr<Transport> connect_redis(const Config& cfg) { return std::make_unique<RedisTransport>(cfg, nullptr); }

std::unique_ptr<Transport> connect_redis_member(const Config& cfg, const MemberOptions& member) {
  return std::make_unique<RedisTransport>(cfg, &member);
}

}  // namespace farmem::net
