// The control path: removing our keys (a far free, the clean-up at exit, and
// before a fatal line) on blocking connections of its own, one per node. Keys
// go in UNLINK batches that a cluster node accepts (one stripe, one slot);
// batches are pipelined per node, and a redirection or a node that breaks is
// followed as the queue pairs follow it.
#pragma once
#include <hiredis/hiredis.h>

#include <cstdint>
#include <string>
#include <vector>

#include "transport/redis/shared.hpp"

namespace farmem::net::redis {

constexpr std::size_t kUnlinkBatch = 256;  // keys per UNLINK

class Control {
 public:
  // patient: a node that breaks is waited for (Shared::recover); otherwise
  // unlink gives up at once (the clean-up before a fatal line).
  explicit Control(Shared& s, bool patient = true) : s_(s), patient_(patient) {}
  ~Control() { close(); }
  Control(const Control&) = delete;
  Control& operator=(const Control&) = delete;

  // UNLINK the keys of pages (ascending). False if a pool member's Redis
  // broke: those pages' keys went with it, or a restart removes them.
  bool unlink(const std::vector<std::uint64_t>& pages);
  // UNLINK every key this run wrote (each page's bit cleared). False as unlink;
  // the pages of a batch that failed are marked again.
  bool unlink_all();
  void close();

 private:
  struct Batch {
    unsigned node;
    std::size_t first, count;  // pages[first, first + count)
  };
  bool unlink_once(const std::vector<std::uint64_t>& pages, std::vector<std::uint64_t>& again);
  void unlink_one(std::uint64_t page);  // following MOVED, ASK and TRYAGAIN
  redisContext* connection(unsigned node);  // null: the node is gone and owns no slot now
  redisContext* reconnect(unsigned node, const std::string& why);  // the same, after node broke
  void drop(unsigned node);

  Shared& s_;
  bool patient_;
  std::vector<redisContext*> c_;  // per node, opened when first needed
};

}  // namespace farmem::net::redis
