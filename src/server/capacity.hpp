// The far memory one farmem-server hands out (--capacity), shared by all its
// listeners. Sessions do not reserve their size up front: each holds a lease
// (session_memory.hpp) that grows from this account as its pages are first
// written and shrinks as they are discarded, so a client may ask for any
// address space and is refused only when the server is really full. RDMA
// sessions, whose memory is pinned when registered, take their whole size at
// once. It also keeps each session's share (ClientUsage): the per-client rows
// of the server's live statistics and FARMEM_METRICS. Thread-safe: each
// listener runs on a thread of its own.
#pragma once
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace farmem::server {

// One client session: what it was granted, and what it wrote and read. The
// listener's loop that serves the session counts (relaxed); the main thread
// reads them for the live statistics.
struct ClientUsage {
  std::uint64_t session = 0;  // numbered from 1 as sessions open on this server
  std::string client;         // the peer as its listener names it (tcp: ADDRESS:PORT)
  std::atomic<std::uint64_t> granted{0}, written{0}, read{0};
};

class CapacityAccount {
 public:
  explicit CapacityAccount(std::uint64_t capacity) : capacity_(capacity) {}
  CapacityAccount(const CapacityAccount&) = delete;
  CapacityAccount& operator=(const CapacityAccount&) = delete;

  // Grants `bytes` more to a session (counted in its ClientUsage), all or
  // nothing. False when fewer are free.
  bool grant(std::uint64_t bytes, ClientUsage& to);
  // Gives back what grant() gave.
  void give_back(std::uint64_t bytes, ClientUsage& from);
  // Counts sessions for the usage lines, and lists them for the per-client
  // rows: numbers c (c->session) and keeps it until session_closed(c).
  void session_opened(const std::shared_ptr<ClientUsage>& c);
  void session_closed(const std::shared_ptr<ClientUsage>& c);
  // The open sessions, oldest first.
  std::vector<std::shared_ptr<ClientUsage>> clients() const;

  struct Usage {
    std::size_t sessions = 0;
    std::uint64_t granted = 0;
  };
  Usage usage() const;
  std::uint64_t capacity() const { return capacity_; }
  // "N MiB of M MiB are in use by K sessions": for refusals.
  std::string describe() const;

 private:
  const std::uint64_t capacity_;
  mutable std::mutex mu_;
  Usage used_;
  std::uint64_t next_session_ = 1;
  std::vector<std::shared_ptr<ClientUsage>> clients_;
};

}  // namespace farmem::server
