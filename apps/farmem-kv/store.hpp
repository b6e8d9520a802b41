// The key-value store behind farmem-kv: values live in far memory, in chunks
// of power-of-two size classes carved from 1 MiB far slabs; keys and the index
// (key -> chunk) stay local, sharded under 64 locks. A get copies the value out
// under its shard's lock, so a concurrent set or delete never frees a chunk
// that is being read. The locks are uthread mutexes: a far miss inside one
// parks the uthread, and another uthread wanting the lock parks too instead of
// blocking the scheduler's thread (they work from plain threads as well).
#pragma once
#include <cstdint>
#include <mutex>  // std::lock_guard
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "farmem/uthread.hpp"

namespace farmem_kv {

struct Value {
  std::uint32_t flags = 0;
  std::string data;
};

class Store {
 public:
  static constexpr std::size_t kMaxValue = 1 << 20;  // memcached's default item limit
  static constexpr std::size_t kMaxKey = 250;

  // capacity: far bytes the values may use (whole slabs).
  explicit Store(std::uint64_t capacity);
  ~Store();
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  enum class SetResult { Stored, TooLarge, OutOfMemory };
  SetResult set(const std::string& key, std::uint32_t flags, const std::string& data);
  std::optional<Value> get(const std::string& key);
  bool remove(const std::string& key);

  std::uint64_t items() const;
  std::uint64_t value_bytes() const;
  std::uint64_t far_bytes() const;  // slabs taken from far memory
  std::uint64_t capacity() const { return capacity_; }

 private:
  static constexpr unsigned kMinShift = 6;   // 64-byte chunks
  static constexpr unsigned kMaxShift = 20;  // 1 MiB chunks
  static constexpr unsigned kClasses = kMaxShift - kMinShift + 1;
  static constexpr std::uint64_t kSlab = 1 << 20;
  static constexpr unsigned kShards = 64;

  struct Item {
    std::uint64_t addr;  // far address of the chunk
    std::uint32_t len, flags;
    unsigned cls;
  };
  struct Shard {
    mutable farmem::uthread::Mutex mu;
    std::unordered_map<std::string, Item> map;
    std::uint64_t bytes = 0;
  };
  struct Class {
    farmem::uthread::Mutex mu;
    std::vector<std::uint64_t> free;  // chunk addresses
  };

  static unsigned class_of(std::size_t len);
  std::optional<std::uint64_t> alloc_chunk(unsigned cls);
  void free_chunk(unsigned cls, std::uint64_t addr);
  Shard& shard_of(const std::string& key);

  const std::uint64_t capacity_;
  Shard shards_[kShards];
  Class classes_[kClasses];
  mutable farmem::uthread::Mutex slabs_mu_;
  std::vector<std::uint64_t> slabs_;
};

}  // namespace farmem_kv
