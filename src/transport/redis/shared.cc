// The Redis deployment as this run sees it (see shared.hpp).
#include "transport/redis/shared.hpp"

#include <netdb.h>
#include <sys/mman.h>

#include <cstring>
#include <ctime>

#include "farmem/runtime.hpp"
#include "runtime/fatal.hpp"
#include "runtime/os.hpp"
#include "transport/redis/connection.hpp"

namespace farmem::net::redis {

using detail::now_ns;

void Shared::map_memory() {
  const std::size_t view_bytes = (sizeof(ReaperView) + 4095) / 4096 * 4096;
  map_bytes = view_bytes + (npages + 63) / 64 * 8;
  void* m = mmap(nullptr, map_bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (m == MAP_FAILED) throw Error(std::string("redis: cannot map the written-page bitmap: ") + detail::errno_text(errno));
  view = static_cast<ReaperView*>(m);  // zeros: no node yet, every slot on node 0
  view->cluster = uri.cluster;
  written = reinterpret_cast<std::atomic<std::uint64_t>*>(static_cast<char*>(m) + view_bytes);
}

void Shared::unmap_memory() {
  if (view) munmap(view, map_bytes);
  view = nullptr;
}

unsigned Shared::learn(const Node& node, bool* added) {
  std::lock_guard<std::mutex> g(mu_);
  if (added) *added = false;
  for (unsigned i = 0; i < nodes_.size(); ++i)
    if (nodes_[i].host == node.host && nodes_[i].port == node.port) return i;
  if (added) *added = true;
  if (nodes_.size() == kMaxNodes)
    detail::fatal("the Redis Cluster at %s has more than %u masters; farmem knows at most that many",
                  uri.shown.c_str(), kMaxNodes);
  const unsigned i = static_cast<unsigned>(nodes_.size());
  ReaperView::Address& a = view->addr[i];
  addrinfo hints{}, *res = nullptr;
  hints.ai_socktype = SOCK_STREAM;
  if (getaddrinfo(node.host.c_str(), std::to_string(node.port).c_str(), &hints, &res) == 0 && res) {
    std::memcpy(&a.sa, res->ai_addr, res->ai_addrlen);
    a.len = res->ai_addrlen;
    freeaddrinfo(res);
  }  // else len stays 0: the reaper skips this node
  nodes_.push_back(node);
  run_ids_.emplace_back();
  view->nodes.store(static_cast<std::uint32_t>(nodes_.size()), std::memory_order_release);
  return i;
}

Node Shared::node(unsigned i) {
  std::lock_guard<std::mutex> g(mu_);
  return nodes_.at(i);
}

long long Shared::discover() {
  if (!uri.cluster) {
    learn(uri.nodes[0]);  // node 0 owns every slot (the view starts zeroed)
    redisContext* c = open(0);
    long long replicas = -1;
    try {
      const std::string n = info_field(c, uri.shown, "replication", "connected_slaves");
      if (!n.empty()) replicas = std::strtoll(n.c_str(), nullptr, 10);
      replicas_[0].store(static_cast<int>(replicas), std::memory_order_relaxed);
    } catch (const Error&) {
      redisFree(c);
      throw;
    }
    redisFree(c);
    return replicas;
  }
  std::string why;
  long long replicas = -1;
  if (!reload_slots(why, &replicas)) throw Error(why);
  return replicas;
}

bool Shared::reload_slots(std::string& why, long long* replicas) {
  // Known masters first (a seed may be gone), then the URI's seeds.
  std::vector<Node> ask;
  {
    std::lock_guard<std::mutex> g(mu_);
    ask = nodes_;
  }
  ask.insert(ask.end(), uri.nodes.begin(), uri.nodes.end());
  for (const Node& n : ask) {
    const std::string where = redis::where(uri, n);
    redisContext* c = nullptr;
    try {
      c = open_connection(uri, n);
      Reply r = command(c, where, {"CLUSTER", "SLOTS"});
      redisFree(c);
      c = nullptr;
      if (r.r->type == REDIS_REPLY_ERROR) {
        std::string msg = text(r.r);
        if (msg.find("cluster support disabled") != std::string::npos)
          throw Error("Redis at " + where + " is not a cluster node (" + msg +
                      "); for a standalone Redis write redis://HOST:PORT in FARMEM_BACKEND");
        throw Error("Redis at " + where + " refused CLUSTER SLOTS: " + msg);
      }
      if (r.r->type != REDIS_REPLY_ARRAY) throw Error("Redis at " + where + " answered CLUSTER SLOTS with no slot map");
      // [first, last, [host, port, id, ...], replica...] for each range.
      struct Range {
        unsigned first, last;
        Node master;
        long long replicas;
      };
      std::vector<Range> ranges;
      std::uint64_t covered = 0;
      long long fewest = -1;
      for (std::size_t i = 0; i < r.r->elements; ++i) {
        const redisReply* e = r.r->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements < 3 || e->element[0]->type != REDIS_REPLY_INTEGER ||
            e->element[1]->type != REDIS_REPLY_INTEGER || e->element[2]->type != REDIS_REPLY_ARRAY ||
            e->element[2]->elements < 2 || e->element[2]->element[1]->type != REDIS_REPLY_INTEGER)
          throw Error("Redis at " + where + " answered CLUSTER SLOTS in a form farmem does not know");
        const long long first = e->element[0]->integer, last = e->element[1]->integer;
        if (first < 0 || last < first || last >= kSlots)
          throw Error("Redis at " + where + " answered CLUSTER SLOTS with a slot out of range");
        Node m;
        m.host = text(e->element[2]->element[0]);
        if (m.host.empty() || m.host == "?") m.host = n.host;  // a node that does not know its own address
        m.port = static_cast<int>(e->element[2]->element[1]->integer);
        const long long reps = static_cast<long long>(e->elements) - 3;
        ranges.push_back({static_cast<unsigned>(first), static_cast<unsigned>(last), m, reps});
        covered += static_cast<std::uint64_t>(last - first + 1);
        fewest = fewest < 0 ? reps : std::min(fewest, reps);
      }
      if (covered < kSlots)
        throw Error("the Redis Cluster at " + uri.shown + " serves only " + std::to_string(covered) +
                    " of the 16384 slots (CLUSTER SLOTS at " + shown(n) +
                    "); fix it first (redis-cli --cluster fix HOST:PORT)");
      for (const Range& range : ranges) {
        const unsigned idx = learn(range.master);
        replicas_[idx].store(static_cast<int>(range.replicas), std::memory_order_relaxed);
        for (unsigned s = range.first; s <= range.last; ++s)
          view->owner[s].store(static_cast<std::uint16_t>(idx), std::memory_order_relaxed);
      }
      if (replicas) *replicas = fewest;
      return true;
    } catch (const Error& e) {
      if (c) redisFree(c);
      const std::string w = e.what();
      // A node that is not a cluster, or a partial map, is the answer: asking others will not change it.
      if (w.find("not a cluster node") != std::string::npos || w.find("serves only") != std::string::npos) {
        why = w;
        return false;
      }
      if (why.empty()) why = w;
    }
  }
  return false;
}

redisContext* Shared::open(unsigned i) {
  const Node n = node(i);
  const std::string where = redis::where(uri, n);
  redisContext* c = open_connection(uri, n);
  try {
    const std::string id = info_field(c, where, "server", "run_id");
    // A replica not promoted yet refuses writes. (A cluster replica would redirect, but we never ask one.)
    if (info_field(c, where, "replication", "role") != "master")
      throw Error("Redis at " + where + " answers as a replica");
    std::lock_guard<std::mutex> g(mu_);
    std::string& known = run_ids_.at(i);
    if (!known.empty() && id != known) {
      if (wait_for(i) == 0)
        detail::fatal("Redis at %s is another Redis now (restarted, or failed over: run_id %s, was %s) and "
                      "FARMEM_REDIS_WAIT=0 kept no replica copy of our pages, so some may be gone or old; far "
                      "memory is lost: restart the application (FARMEM_REDIS_WAIT=1 with a replica survives a "
                      "failover)",
                      where.c_str(), id.c_str(), known.c_str());
      failovers.fetch_add(1, std::memory_order_relaxed);
    }
    known = id;
  } catch (...) {
    redisFree(c);
    throw;
  }
  return c;
}

redisContext* Shared::recover(unsigned i, const std::string& why) {
  if (survive) gone(why);  // not reached: a member's queue pair fails its posts instead
  const std::uint64_t deadline = now_ns() + silence_ns;
  std::string last = why;
  for (;;) {
    try {
      redisContext* c = open(i);
      reconnects.fetch_add(1, std::memory_order_relaxed);
      return c;
    } catch (const Error& e) {
      last = e.what();
    }
    if (uri.cluster) {
      std::string unused;
      if (reload_slots(unused)) {
        bool owns = false;
        for (unsigned s = 0; s < kSlots && !owns; ++s) owns = owner(s) == i;
        if (!owns) {  // its slots are served elsewhere: a failover (or they were resharded away)
          if (wait_for(i) == 0)
            detail::fatal("Redis at %s (of %s) is gone and a failover gave its slots to another node, but "
                          "FARMEM_REDIS_WAIT=0 kept no replica copy of our pages, so some may be gone or old; far "
                          "memory is lost: restart the application (FARMEM_REDIS_WAIT=1 survives a failover)",
                          shown(node(i)).c_str(), uri.shown.c_str());
          failovers.fetch_add(1, std::memory_order_relaxed);
          return nullptr;
        }
      }
    }
    if (now_ns() > deadline)
      gone(why + "; no Redis to take over within " + std::to_string(silence_ns / 1000000000ull) + " s: " + last);
    timespec pause{0, 100 * 1000 * 1000};
    nanosleep(&pause, nullptr);
  }
}

void Shared::mark(std::uint64_t page) {
  if (page >= npages)
    detail::fatal("redis: far page %llu is beyond the far address space (runtime bug)",
                  static_cast<unsigned long long>(page));
  std::uint64_t bit = 1ull << (page % 64);
  if (!(written[page / 64].fetch_or(bit, std::memory_order_relaxed) & bit)) keys.fetch_add(1, std::memory_order_relaxed);
}

bool Shared::unmark(std::uint64_t page) {
  if (page >= npages) return false;
  std::uint64_t bit = 1ull << (page % 64);
  if (!(written[page / 64].fetch_and(~bit, std::memory_order_relaxed) & bit)) return false;
  keys.fetch_sub(1, std::memory_order_relaxed);
  return true;
}

void Shared::full(const std::string& msg) {
  remove_all_keys();
  std::string m = msg;
  while (!m.empty() && m.back() == '.') m.pop_back();
  detail::fatal("far memory is full: Redis at %s refused a page: %s; raise its maxmemory (CONFIG SET maxmemory), "
                "free room in it, or give farmem less far memory (a smaller working set or more --local-mem)",
                uri.shown.c_str(), m.c_str());
}

void Shared::gone(const std::string& why) const {
  detail::fatal("lost Redis at %s (%s); far memory is gone: restart the application when Redis is back",
                uri.shown.c_str(), why.c_str());
}

void Shared::refused(const std::string& msg) {
  if (starts(msg, "OOM")) full(msg);
  if (starts(msg, "MOVED") || starts(msg, "ASK")) not_standalone(msg);
  remove_all_keys();
  detail::fatal("Redis at %s refused a request: %s", uri.shown.c_str(), msg.c_str());
}

void Shared::not_standalone(const std::string& msg) const {
  detail::fatal("Redis at %s is a node of a Redis Cluster (it answered %s); write "
                "redis+cluster://HOST:PORT[,HOST:PORT...] in FARMEM_BACKEND",
                uri.shown.c_str(), msg.c_str());
}

}  // namespace farmem::net::redis
