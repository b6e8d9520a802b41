// The far memory one farmem-server hands out (--capacity), shared by all its
// listeners: a new client session reserves its size here before it gets any
// memory and releases it when it ends. Thread-safe: each listener runs on a
// thread of its own.
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

  // Reserves `bytes` for one new session. Returns false, reserving nothing, when
  // bytes is 0 or more than is free; *refusal is then the message for the
  // client ("the server has N MiB free of M MiB; ask for less (FARMEM_FAR_MEM)").
  bool reserve(std::uint64_t bytes, std::string* refusal);
  // Gives back what one session reserved.
  void release(std::uint64_t bytes);

  struct Usage {
    std::size_t sessions = 0;
    std::uint64_t reserved = 0;
  };
  Usage usage() const;
  std::uint64_t capacity() const { return capacity_; }

 private:
  const std::uint64_t capacity_;
  mutable std::mutex mu_;
  Usage used_;
};

}  // namespace farmem::server
