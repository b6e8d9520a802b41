// The Redis deployment as this run sees it, shared by its queue pairs, the
// control path and the reaper: the URI, our key prefix, which pages hold a key
// (a bit each), the nodes and which of them owns each hash slot, and how a
// broken connection is recovered: the same Redis again, or, in a cluster, the
// node a failover moved its slots to. A standalone Redis is a cluster of one
// node that owns every slot, so the queue pairs have one code path.
#pragma once
#include <hiredis/hiredis.h>
#include <sys/socket.h>

#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "transport/redis/redis_logic.hpp"

namespace farmem::net::redis {

constexpr unsigned kMaxNodes = 64;  // masters a run can know of (a failover or resharding adds one)
constexpr std::uint64_t kSilenceLimitNs = 10ull * 1000 * 1000 * 1000;

// What the reaper needs to find our keys after we are gone: where each node is
// and which owns each slot, in memory it shares with us (MAP_SHARED), kept up
// to date as redirections and failovers teach us. The written-page bitmap
// follows it in the same mapping.
struct ReaperView {
  struct Address {
    sockaddr_storage sa;
    socklen_t len;
  };
  std::atomic<std::uint32_t> nodes;  // addr[0, nodes) are filled in
  std::uint32_t cluster;
  Address addr[kMaxNodes];
  std::atomic<std::uint16_t> owner[kSlots];
};

struct Shared {
  Uri uri;
  std::string prefix;
  int wait_setting = -1;       // FARMEM_REDIS_WAIT; -1: 1 on a master with replicas, else 0
  unsigned wait_replicas = 0;  // what that came to at the start, on the master with the fewest (for the statistics)
  std::uint64_t silence_ns = kSilenceLimitNs;
  bool survive = false;  // a pool member: a lost Redis fails requests instead of ending the process
  std::uint64_t npages = 0;
  std::atomic<std::uint64_t> keys{0}, reads{0}, writes{0}, waits{0}, reconnects{0}, redirects{0}, failovers{0};

  ReaperView* view = nullptr;                     // mmap'd with the bitmap
  std::atomic<std::uint64_t>* written = nullptr;  // a bit per page: only touched parts cost memory
  std::size_t map_bytes = 0;

  // Maps the reaper's view and the bitmap for npages pages. Throws Error.
  void map_memory();
  void unmap_memory();

  // The slot of page's key, and the node that owns it as far as we know.
  unsigned slot_of(std::uint64_t page) const { return stripe_slot(prefix, page / kPagesPerStripe); }
  unsigned owner(unsigned slot) const { return view->owner[slot].load(std::memory_order_relaxed); }
  unsigned owner_of(std::uint64_t page) const { return owner(slot_of(page)); }
  // Index of node, added if new (its address resolved for the reaper; *added says so).
  unsigned learn(const Node& node, bool* added = nullptr);
  Node node(unsigned i);
  // Replicas a write to node must reach before it completes (WAIT).
  unsigned wait_for(unsigned node) const {
    if (wait_setting >= 0) return static_cast<unsigned>(wait_setting);
    return replicas_[node].load(std::memory_order_relaxed) > 0 ? 1 : 0;
  }
  // MOVED: slot lives on node now.
  void moved(unsigned slot, unsigned node) {
    view->owner[slot].store(static_cast<std::uint16_t>(node), std::memory_order_relaxed);
    redirects.fetch_add(1, std::memory_order_relaxed);
  }

  // Finds the nodes: a standalone Redis owns every slot; a cluster's map is
  // read from the first seed node that answers. Returns the fewest replicas
  // any master has (-1: unknown). Throws Error naming the problem and the fix.
  long long discover();
  // The cluster's slot map again (CLUSTER SLOTS from any node that answers);
  // false if none did. Sets replicas to the fewest replicas any master has.
  bool reload_slots(std::string& why, long long* replicas = nullptr);

  // A blocking connection to node, which must be a master and the same Redis
  // process as before (run_id); another process there is taken only when
  // FARMEM_REDIS_WAIT kept a replica copy of every acknowledged page. Throws
  // Error if it cannot be had now.
  redisContext* open(unsigned node);
  // After a connection to node broke (why): a connection to it again, or null
  // when a failover gave its slots to another node (taken only when
  // FARMEM_REDIS_WAIT kept replica copies). Retried for the silence limit,
  // then the process ends with one line. Alone only: a pool member's lost
  // Redis is the pool's to handle.
  redisContext* recover(unsigned node, const std::string& why);

  // Marks page written; a new key counts once.
  void mark(std::uint64_t page);
  // Clears page's bit; true if it was set (its key exists).
  bool unmark(std::uint64_t page);

  // Before a fatal line while Redis still answers: remove our keys, so a run
  // that ends on a full Redis does not leave it full (control.cc).
  void remove_all_keys();
  [[noreturn]] void full(const std::string& msg);
  [[noreturn]] void gone(const std::string& why) const;
  [[noreturn]] void refused(const std::string& msg);
  // MOVED from a redis:// URI's server: it is a cluster node.
  [[noreturn]] void not_standalone(const std::string& msg) const;

 private:
  std::mutex mu_;                    // nodes_ and run_ids_
  std::vector<Node> nodes_;
  std::vector<std::string> run_ids_;  // the Redis process holding our pages on each node ("" not met yet)
  std::atomic<int> replicas_[kMaxNodes] = {};  // each master's replicas when we last looked
};

}  // namespace farmem::net::redis
