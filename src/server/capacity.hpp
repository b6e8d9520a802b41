// The far memory one farmem-server hands out (--capacity), shared by all its
// listeners. Sessions do not reserve their size up front: each holds a lease
// (session_memory.hpp) that grows from this account as its pages are first
// written and shrinks as they are discarded, so a client may ask for any
// address space and is refused only when the server is really full. RDMA
// sessions, whose memory is pinned when registered, take their whole size at
// once. Thread-safe: each listener runs on a thread of its own.
#pragma once
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <string>

namespace farmem::server {

class CapacityAccount {
 public:
  explicit CapacityAccount(std::uint64_t capacity) : capacity_(capacity) {}
  CapacityAccount(const CapacityAccount&) = delete;
  CapacityAccount& operator=(const CapacityAccount&) = delete;

  // Grants `bytes` more to a session, all or nothing. False when fewer are free.
  bool grant(std::uint64_t bytes);
  // Gives back what grant() gave.
  void give_back(std::uint64_t bytes);
  // Counts sessions for the usage lines.
  void session_opened();
  void session_closed();

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
};

}  // namespace farmem::server
