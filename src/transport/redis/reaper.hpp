// The reaper: a process that outlives ours and removes the keys still marked in
// the shared bitmap when every copy of the pipe's write end is closed (our
// exit, however it happens, or an exec). It sends each key to the node that
// owns its slot: in a cluster it asks for the slot map first, and falls back
// on what we last knew (Shared's ReaperView, kept up to date in shared memory). It is started with raw clone() so that no fork handler of
// the runtime runs, and it never allocates: the parent may have held the
// allocator's lock in another thread. Everything it needs is prepared before
// the clone.
#pragma once
#include <cstdint>
#include <string>

#include "transport/redis/shared.hpp"

namespace farmem::net::redis {

class Reaper {
 public:
  Reaper() = default;
  Reaper(const Reaper&) = delete;
  Reaper& operator=(const Reaper&) = delete;
  // A transport closed before exit (a probe, a test) ends its reaper now: the
  // clean-up at shutdown has cleared the bit map, so it has nothing to do.
  ~Reaper();
  // Prepares and starts it; on any failure there is simply no reaper.
  void start(const Shared& s);

 private:
  [[noreturn]] void run(int pipe_read);
  // A connection to a, with AUTH and SELECT sent; -1 if it cannot be had.
  int open_node(const ReaperView::Address& a) const;
  // The cluster's slot map from the first of addr[0, nodes) that answers
  // CLUSTER SLOTS, into addr and owner; returns the masters' count (nodes,
  // the arrays untouched, if none answers).
  std::uint32_t fresh_map(ReaperView::Address* addr, std::uint16_t* owner, std::uint32_t nodes) const;

  std::string preamble_, prefix_;  // AUTH and SELECT, sent first on each connection
  std::uint64_t preamble_cmds_ = 0;
  const ReaperView* view_ = nullptr;
  const std::atomic<std::uint64_t>* written_ = nullptr;
  std::uint64_t words_ = 0;
  int keep_open_ = -1;
};

}  // namespace farmem::net::redis
