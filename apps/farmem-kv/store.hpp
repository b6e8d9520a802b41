// The key-value store behind farmem-kv: items with memcached's semantics
// (flags, expiry, CAS, add/replace/append/prepend/cas, incr/decr, touch,
// flush) whose values live in far memory, in chunks of power-of-two size
// classes carved from 1 MiB far slabs; keys and the index (key -> item) stay
// local, sharded under 64 locks.
//
// A read never touches far memory under a shard lock: it pins the item (a
// reference count), lets the lock go, and copies the value out. A chunk is
// written before its item is published and never rewritten, and it returns to
// its free list only when the last reference goes, so a concurrent set or
// delete never frees or changes a chunk that is being read. Read-modify-write
// commands (append, prepend, incr, decr) read a pinned copy and publish the
// new value only if the item's CAS is unchanged, retrying otherwise.
//
// Two modes: a store never drops a live value and refuses a new one when
// --capacity is reached; a cache drops the least recently used items of the
// size class it needs (CLOCK: a get sets a bit, the hand gives a set bit a
// second chance); when the class has nothing to drop, the slab of the
// coldest item of the class with the most slabs is emptied and moves to it
// (memcached's slab rebalancing, simplified). Expired and flushed items are
// reclaimed on access and by
// sweep(), which the server calls every second.
//
// The locks are uthread mutexes: a waiter parks instead of blocking its
// scheduler's thread (they work from plain threads as well). Lock order:
// shard, then class, then the slab lock.
#pragma once
#include <atomic>
#include <cstdint>
#include <functional>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "farmem/uthread.hpp"

namespace farmem_kv {

struct Value {
  std::uint32_t flags = 0;
  std::uint64_t cas = 0;
  std::string data;
};

// memcached's general counters that the store keeps (the server keeps the
// connection ones). Monotonic unless reset().
struct Counters {
  std::atomic<std::uint64_t> get_hits{0}, get_misses{0}, get_expired{0}, get_flushed{0}, cmd_get{0}, cmd_set{0},
      cmd_touch{0}, touch_hits{0}, touch_misses{0}, delete_hits{0}, delete_misses{0}, incr_hits{0}, incr_misses{0},
      decr_hits{0}, decr_misses{0}, cas_hits{0}, cas_misses{0}, cas_badval{0}, cmd_flush{0}, total_items{0},
      evictions{0}, evicted_unfetched{0}, expired_unfetched{0}, reclaimed{0}, outofmemory{0};
};

// One size class as `stats slabs` / `stats items` show it.
struct ClassStats {
  unsigned id;  // 1-based, as memcached numbers them
  std::uint64_t chunk_size, total_chunks, used_chunks, free_chunks, slabs, items, evicted, outofmemory;
};

class Store {
 public:
  static constexpr std::size_t kMaxValue = 1 << 20;  // memcached's default item limit
  static constexpr std::size_t kMaxKey = 250;
  static constexpr std::uint64_t kSlab = 1 << 20;

  struct Options {
    std::uint64_t capacity = 4ull << 30;  // far bytes the values may use (whole slabs)
    bool cache = false;                   // drop LRU items at capacity instead of refusing
    std::function<std::int64_t()> clock;  // unix seconds; default time(nullptr) (tests move it)
    // Tests only: runs in get() after the item is pinned and its shard lock
    // released, just before the far copy (so a test can hold a reader there).
    std::function<void(std::string_view key)> before_far_read;
  };
  explicit Store(Options o);
  explicit Store(std::uint64_t capacity) : Store(Options{capacity, false, {}, {}}) {}
  ~Store();
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  enum class Mode { Set, Add, Replace, Append, Prepend, Cas };
  enum class Result { Stored, NotStored, Exists, NotFound, TooLarge, OutOfMemory };
  // expiry: absolute unix seconds, 0 = never (see expiry_of). Append and
  // prepend keep the item's flags and expiry. Cas compares with cas_in.
  Result store(Mode m, std::string_view key, std::uint32_t flags, std::int64_t expiry, std::string_view data,
               std::uint64_t cas_in = 0);
  Result set(const std::string& key, std::uint32_t flags, const std::string& data) {
    return store(Mode::Set, key, flags, 0, data);
  }
  // touch_expiry: when set, the item's expiry becomes it (gat, gats).
  std::optional<Value> get(std::string_view key, std::optional<std::int64_t> touch_expiry = std::nullopt);
  bool touch(std::string_view key, std::int64_t expiry);
  bool remove(std::string_view key);
  enum class DeltaResult { Ok, NotFound, NonNumeric, OutOfMemory };
  DeltaResult delta(std::string_view key, bool incr, std::uint64_t by, std::uint64_t& result);
  // Items stored before now + delay seconds stop being visible then.
  void flush(std::int64_t delay);
  // Reclaims expired and flushed items; returns how many.
  std::uint64_t sweep();
  // Calls fn(key, bytes, expiry) for up to limit (0 = all) items of a class (stats cachedump).
  void dump(unsigned class_id, unsigned limit, const std::function<void(const std::string&, std::uint32_t, std::int64_t)>& fn);

  // memcached's exptime (seconds from now; absolute unix time when over 30
  // days; negative: already expired) as an absolute expiry, 0 = never.
  std::int64_t expiry_of(std::int64_t exptime) const;
  std::int64_t now() const { return clock_(); }

  static unsigned shard_index(std::string_view key);  // which of the 64 locks guards key
  std::uint64_t items() const { return items_.load(std::memory_order_relaxed); }
  std::uint64_t value_bytes() const { return bytes_.load(std::memory_order_relaxed); }
  std::uint64_t far_bytes() const;  // slabs taken from far memory
  std::uint64_t capacity() const { return capacity_; }
  bool cache_mode() const { return cache_; }
  std::vector<ClassStats> class_stats() const;
  Counters& counters() { return counters_; }
  void reset_counters();

 private:
  static constexpr unsigned kMinShift = 6;   // 64-byte chunks
  static constexpr unsigned kMaxShift = 20;  // 1 MiB chunks
  static constexpr unsigned kClasses = kMaxShift - kMinShift + 1;
  static constexpr unsigned kShards = 64;

  struct Item {
    std::string key;
    std::uint64_t addr = 0;  // far address of the chunk
    std::uint32_t len = 0, flags = 0;
    std::atomic<std::int64_t> expiry{0};  // unix seconds, 0 = never (touch changes it)
    std::int64_t stored = 0;  // unix seconds of the last store (delayed flush)
    std::uint64_t cas = 0;
    unsigned cls = 0;
    std::atomic<std::uint32_t> refs{1};  // the index's, plus one per reader
    std::atomic<bool> referenced{false}, fetched{false};
    bool linked = false;  // in the index and its class's list
    Item* prev = nullptr;
    Item* next = nullptr;
  };
  struct Shard {
    mutable farmem::uthread::Mutex mu;
    std::unordered_map<std::string_view, Item*> map;  // keys point into the items
  };
  struct Class {
    mutable farmem::uthread::Mutex mu;
    std::vector<std::uint64_t> free;  // chunk addresses
    Item* head = nullptr;             // newest
    Item* tail = nullptr;             // the CLOCK hand starts here
    std::uint64_t slabs = 0, items = 0, evicted = 0, outofmemory = 0;
  };
  // An item pinned by a reader: released (and freed if last) on destruction.
  class Pin;

  static unsigned class_of(std::size_t len);
  Shard& shard_of(std::string_view key);
  std::optional<std::uint64_t> alloc_chunk(unsigned cls);
  bool evict_one(unsigned cls);
  bool move_slab(unsigned cls);
  void release(Item* it);
  bool dead(const Item& it, std::int64_t now) const;
  // Under the shard lock: unlinks it from the index and its class list.
  void unlink_locked(Shard& s, Item* it);
  // Under the shard lock: the live item for key, unlinking it if expired or flushed.
  Item* find_locked(Shard& s, std::string_view key, std::int64_t now, std::vector<Item*>& dropped);
  // The live item for key with a reference taken (the caller pins it), or nullptr.
  Item* find_and_ref(Shard& s, std::string_view key);
  // Publishes `it` in place of `cur` if key still maps to cur (nobody changed
  // the item since it was read); false, changing nothing, otherwise.
  bool replace_if_current(Shard& s, std::string_view key, Item* cur, Item* it);
  Item* make_item(std::string_view key, std::uint32_t flags, std::int64_t expiry, std::string_view data,
                  std::string_view suffix = {});
  void link_locked(Shard& s, Item* it);
  std::string read_value(const Item& it);

  const std::uint64_t capacity_;
  const bool cache_;
  const std::function<std::int64_t()> clock_;
  const std::function<void(std::string_view)> before_far_read_;
  const std::int64_t started_;
  Shard shards_[kShards];
  Class classes_[kClasses];
  mutable farmem::uthread::Mutex slabs_mu_;
  std::set<std::uint64_t> slabs_;  // far addresses of the slabs (1 MiB each, page aligned)
  std::atomic<std::uint64_t> next_cas_{1}, items_{0}, bytes_{0};
  std::atomic<std::uint64_t> flush_cas_{0};    // items with a CAS at most this are flushed
  std::atomic<std::int64_t> flush_time_{0};    // items stored before it are flushed from it on
  Counters counters_;
};

}  // namespace farmem_kv
