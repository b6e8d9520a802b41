// The far-memory key-value store (store.hpp): items, their chunks, the CLOCK
// lists of cache mode, expiry and flush.
#include "store.hpp"

#include <ctime>
#include <functional>
#include <mutex>  // std::lock_guard

#include "farmem/far.hpp"

namespace farmem_kv {

namespace {
constexpr std::int64_t kMaxRelative = 60 * 60 * 24 * 30;  // memcached: over 30 days is an absolute time
constexpr unsigned kEvictTries = 64;
using Lock = std::lock_guard<farmem::uthread::Mutex>;
}  // namespace

class Store::Pin {
 public:
  Pin(Store& s, Item* it) : s_(s), it_(it) {}
  ~Pin() {
    if (it_) s_.release(it_);
  }
  Pin(const Pin&) = delete;
  Pin& operator=(const Pin&) = delete;
  Item* operator->() const { return it_; }
  explicit operator bool() const { return it_ != nullptr; }

 private:
  Store& s_;
  Item* it_;
};

Store::Store(Options o)
    : capacity_(o.capacity), cache_(o.cache),
      clock_(o.clock ? std::move(o.clock) : std::function<std::int64_t()>([] { return std::int64_t(std::time(nullptr)); })),
      before_far_read_(std::move(o.before_far_read)), started_(clock_()) {}

Store::~Store() {
  for (Shard& s : shards_)
    for (auto& [k, it] : s.map) delete it;
  for (std::uint64_t s : slabs_) farmem::far_free(s, kSlab);
}

unsigned Store::class_of(std::size_t len) {
  unsigned shift = kMinShift;
  while ((std::size_t{1} << shift) < len) ++shift;
  return shift - kMinShift;
}

unsigned Store::shard_index(std::string_view key) {
  return static_cast<unsigned>(std::hash<std::string_view>{}(key) % kShards);
}

Store::Shard& Store::shard_of(std::string_view key) { return shards_[shard_index(key)]; }

std::int64_t Store::expiry_of(std::int64_t exptime) const {
  if (exptime == 0) return 0;
  if (exptime < 0) return 1;  // long past
  if (exptime > kMaxRelative) return exptime <= started_ ? 1 : exptime;
  return now() + exptime;
}

bool Store::dead(const Item& it, std::int64_t now) const {
  const std::int64_t e = it.expiry.load(std::memory_order_relaxed);
  if (e != 0 && e <= now) return true;
  if (it.cas <= flush_cas_.load(std::memory_order_relaxed)) return true;
  const std::int64_t ft = flush_time_.load(std::memory_order_relaxed);
  return ft != 0 && now >= ft && it.stored < ft;
}

// A free chunk of the class, carving a new slab when the class has none and
// capacity allows, else (cache mode) evicting the class's coldest items.
std::optional<std::uint64_t> Store::alloc_chunk(unsigned cls) {
  Class& c = classes_[cls];
  for (unsigned tries = 0;; ++tries) {
    {
      Lock g(c.mu);
      if (!c.free.empty()) {
        std::uint64_t a = c.free.back();
        c.free.pop_back();
        return a;
      }
    }
    std::optional<std::uint64_t> slab;
    {
      Lock g(slabs_mu_);
      if ((slabs_.size() + 1) * kSlab <= capacity_) {
        try {
          slab = farmem::far_alloc(kSlab);
          slabs_.insert(*slab);
        } catch (const farmem::Error&) {
          // far memory itself is exhausted: as full as at capacity
        }
      }
    }
    if (slab) {
      const std::uint64_t chunk = std::uint64_t{1} << (cls + kMinShift);
      Lock g(c.mu);
      ++c.slabs;
      for (std::uint64_t off = kSlab; off > chunk;) c.free.push_back(*slab + (off -= chunk));
      return *slab;
    }
    // Full. A store refuses; a cache drops a cold item of this class (its
    // chunk comes back when its last reader lets go) and tries again.
    if (!cache_ || tries >= kEvictTries || !(evict_one(cls) || move_slab(cls))) {
      Lock g(c.mu);
      ++c.outofmemory;
      counters_.outofmemory.fetch_add(1, std::memory_order_relaxed);
      return std::nullopt;
    }
  }
}

// CLOCK over the class's list: from the tail, a referenced item loses its bit
// and goes to the head; the first unreferenced one (or a dead one) is unlinked.
bool Store::evict_one(unsigned cls) {
  Class& c = classes_[cls];
  Item* victim = nullptr;
  const std::int64_t t = now();
  {
    Lock g(c.mu);
    for (std::uint64_t steps = 0; c.tail && steps <= 2 * c.items; ++steps) {
      Item* it = c.tail;
      if (!it->referenced.exchange(false, std::memory_order_relaxed) || dead(*it, t)) {
        victim = it;
        victim->refs.fetch_add(1, std::memory_order_relaxed);  // linked, so refs >= 1
        break;
      }
      if (c.head == it) continue;  // alone in the list: its bit is now clear
      c.tail = it->prev;
      c.tail->next = nullptr;
      it->prev = nullptr;
      it->next = c.head;
      c.head->prev = it;
      c.head = it;
    }
  }
  if (!victim) return false;
  bool evicted = false;
  const bool was_dead = dead(*victim, t);
  {
    Shard& s = shard_of(victim->key);
    Lock g(s.mu);
    if (victim->linked) {
      unlink_locked(s, victim);
      evicted = true;
    }
  }
  if (evicted) {
    if (was_dead) {
      counters_.reclaimed.fetch_add(1, std::memory_order_relaxed);
      if (!victim->fetched.load(std::memory_order_relaxed))
        counters_.expired_unfetched.fetch_add(1, std::memory_order_relaxed);
    } else {
      counters_.evictions.fetch_add(1, std::memory_order_relaxed);
      if (!victim->fetched.load(std::memory_order_relaxed))
        counters_.evicted_unfetched.fetch_add(1, std::memory_order_relaxed);
      Lock g(c.mu);
      ++c.evicted;
    }
    release(victim);  // the index's reference
  }
  release(victim);  // ours
  return true;  // something changed: try the free list again
}

// Cache mode, nothing of cls to drop: empty the slab that holds the coldest
// item of the class with the most slabs, and carve it for cls. False when no
// slab could be emptied now (a reader still holds one of its chunks, or a set
// took one meanwhile): the caller gives up after a few tries.
bool Store::move_slab(unsigned cls) {
  unsigned donor = kClasses;
  std::uint64_t most = 0;
  for (unsigned i = 0; i < kClasses; ++i) {
    if (i == cls) continue;
    Lock g(classes_[i].mu);
    if (classes_[i].slabs > most) most = classes_[i].slabs, donor = i;
  }
  if (donor == kClasses) return false;
  Class& d = classes_[donor];
  const std::uint64_t chunk = std::uint64_t{1} << (donor + kMinShift);
  std::uint64_t slab;
  std::vector<Item*> victims;
  {
    Lock g(d.mu);
    const std::uint64_t probe = d.tail ? d.tail->addr : d.free.empty() ? 0 : d.free.front();
    if (probe == 0) return false;
    {
      Lock gs(slabs_mu_);
      auto s = slabs_.upper_bound(probe);
      slab = *--s;
    }
    for (Item* it = d.tail; it; it = it->prev)
      if (it->addr >= slab && it->addr < slab + kSlab) {
        it->refs.fetch_add(1, std::memory_order_relaxed);  // linked, so refs >= 1
        victims.push_back(it);
      }
  }
  for (Item* it : victims) {
    bool evicted = false;
    {
      Shard& s = shard_of(it->key);
      Lock g(s.mu);
      if (it->linked) unlink_locked(s, it), evicted = true;
    }
    if (evicted) {
      counters_.evictions.fetch_add(1, std::memory_order_relaxed);
      if (!it->fetched.load(std::memory_order_relaxed))
        counters_.evicted_unfetched.fetch_add(1, std::memory_order_relaxed);
      {
        Lock g(d.mu);
        ++d.evicted;
      }
      release(it);
    }
    release(it);
  }
  {
    // Every chunk of the slab must be free now; take them off the donor's list.
    Lock g(d.mu);
    auto in_slab = [&](std::uint64_t a) { return a >= slab && a < slab + kSlab; };
    std::uint64_t free_in_slab = 0;
    for (std::uint64_t a : d.free) free_in_slab += in_slab(a);
    if (free_in_slab != kSlab / chunk) return false;
    std::erase_if(d.free, in_slab);
    --d.slabs;
  }
  const std::uint64_t mine = std::uint64_t{1} << (cls + kMinShift);
  Class& c = classes_[cls];
  Lock g(c.mu);
  ++c.slabs;
  for (std::uint64_t off = kSlab; off > 0;) c.free.push_back(slab + (off -= mine));
  return true;
}

void Store::release(Item* it) {
  if (it->refs.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
  {
    Class& c = classes_[it->cls];
    Lock g(c.mu);
    c.free.push_back(it->addr);
  }
  delete it;
}

void Store::unlink_locked(Shard& s, Item* it) {
  s.map.erase(std::string_view(it->key));
  it->linked = false;
  items_.fetch_sub(1, std::memory_order_relaxed);
  bytes_.fetch_sub(it->len + it->key.size(), std::memory_order_relaxed);
  Class& c = classes_[it->cls];
  Lock g(c.mu);
  (it->prev ? it->prev->next : c.head) = it->next;
  (it->next ? it->next->prev : c.tail) = it->prev;
  it->prev = it->next = nullptr;
  --c.items;
}

void Store::link_locked(Shard& s, Item* it) {
  s.map[std::string_view(it->key)] = it;
  it->linked = true;
  items_.fetch_add(1, std::memory_order_relaxed);
  bytes_.fetch_add(it->len + it->key.size(), std::memory_order_relaxed);
  counters_.total_items.fetch_add(1, std::memory_order_relaxed);
  Class& c = classes_[it->cls];
  Lock g(c.mu);
  it->next = c.head;
  (c.head ? c.head->prev : c.tail) = it;
  c.head = it;
  ++c.items;
}

Store::Item* Store::find_locked(Shard& s, std::string_view key, std::int64_t t, std::vector<Item*>& dropped) {
  auto f = s.map.find(key);
  if (f == s.map.end()) return nullptr;
  Item* it = f->second;
  if (!dead(*it, t)) return it;
  unlink_locked(s, it);
  counters_.reclaimed.fetch_add(1, std::memory_order_relaxed);
  if (!it->fetched.load(std::memory_order_relaxed)) counters_.expired_unfetched.fetch_add(1, std::memory_order_relaxed);
  dropped.push_back(it);  // released after the shard lock
  return nullptr;
}

Store::Item* Store::find_and_ref(Shard& s, std::string_view key) {
  std::vector<Item*> dropped;
  Item* cur;
  {
    Lock g(s.mu);
    cur = find_locked(s, key, now(), dropped);
    if (cur) cur->refs.fetch_add(1, std::memory_order_relaxed);
  }
  for (Item* d : dropped) release(d);
  return cur;
}

bool Store::replace_if_current(Shard& s, std::string_view key, Item* cur, Item* it) {
  Lock g(s.mu);
  auto f = s.map.find(key);
  if (f == s.map.end() || f->second != cur) return false;
  unlink_locked(s, cur);
  link_locked(s, it);
  return true;
}

// A new, unpublished item holding data + suffix, or nullptr when no chunk is free.
Store::Item* Store::make_item(std::string_view key, std::uint32_t flags, std::int64_t expiry, std::string_view data,
                              std::string_view suffix) {
  const std::size_t len = data.size() + suffix.size();
  const unsigned cls = class_of(len);
  std::optional<std::uint64_t> addr = alloc_chunk(cls);
  if (!addr) return nullptr;
  farmem::copy_to_far(*addr, data.data(), data.size());  // before it is visible
  farmem::copy_to_far(*addr + data.size(), suffix.data(), suffix.size());
  Item* it = new Item;
  it->key.assign(key);
  it->addr = *addr;
  it->len = static_cast<std::uint32_t>(len);
  it->flags = flags;
  it->expiry = expiry;
  it->stored = now();
  it->cas = next_cas_.fetch_add(1, std::memory_order_relaxed);
  it->cls = cls;
  return it;
}

std::string Store::read_value(const Item& it) {
  std::string v(it.len, '\0');
  farmem::copy_from_far(v.data(), it.addr, it.len);
  return v;
}

Store::Result Store::store(Mode m, std::string_view key, std::uint32_t flags, std::int64_t expiry,
                           std::string_view data, std::uint64_t cas_in) {
  counters_.cmd_set.fetch_add(1, std::memory_order_relaxed);
  Shard& s = shard_of(key);
  if (m == Mode::Append || m == Mode::Prepend) {
    // Read the current value pinned, build the new one outside the lock, and
    // publish it only if nobody changed the item meanwhile.
    for (;;) {
      Item* cur = find_and_ref(s, key);
      if (!cur) return Result::NotStored;
      Pin pin(*this, cur);
      if (cur->len + data.size() > kMaxValue) return Result::TooLarge;
      const std::string old = read_value(*cur);
      Item* it = m == Mode::Append ? make_item(key, cur->flags, cur->expiry.load(), old, data)
                                   : make_item(key, cur->flags, cur->expiry.load(), data, old);
      if (!it) return Result::OutOfMemory;
      if (replace_if_current(s, key, cur, it)) {
        release(cur);  // the index's reference; the pin's goes at scope end
        return Result::Stored;
      }
      release(it);  // never published: its chunk goes back
    }
  }
  if (data.size() > kMaxValue) {
    if (m == Mode::Set) remove(key);  // as memcached: a failed set leaves no stale value
    return Result::TooLarge;
  }
  Item* it = make_item(key, flags, expiry, data);
  if (!it) {
    if (m == Mode::Set) remove(key);
    return Result::OutOfMemory;
  }
  Item* old = nullptr;
  Result r = Result::Stored;
  std::vector<Item*> dropped;
  {
    Lock g(s.mu);
    Item* cur = find_locked(s, key, now(), dropped);
    switch (m) {
      case Mode::Add: r = cur ? Result::NotStored : Result::Stored; break;
      case Mode::Replace: r = cur ? Result::Stored : Result::NotStored; break;
      case Mode::Cas: r = !cur ? Result::NotFound : cur->cas != cas_in ? Result::Exists : Result::Stored; break;
      default: break;
    }
    if (r == Result::Stored) {
      if (cur) unlink_locked(s, cur);
      old = cur;
      link_locked(s, it);
    } else if (cur && m == Mode::Add) {
      cur->referenced.store(true, std::memory_order_relaxed);  // memcached bumps it in its LRU
    }
  }
  for (Item* d : dropped) release(d);
  if (m == Mode::Cas)
    (r == Result::Stored ? counters_.cas_hits : r == Result::Exists ? counters_.cas_badval : counters_.cas_misses)
        .fetch_add(1, std::memory_order_relaxed);
  if (r != Result::Stored) release(it);
  if (old) release(old);  // freed now, or when its last reader lets go
  return r;
}

std::optional<Value> Store::get(std::string_view key, std::optional<std::int64_t> touch_expiry) {
  Shard& s = shard_of(key);
  std::vector<Item*> dropped;
  Item* it;
  bool expired = false, flushed = false;
  {
    Lock g(s.mu);
    const std::int64_t t = now();
    it = find_locked(s, key, t, dropped);
    if (!dropped.empty()) {
      const std::int64_t e = dropped[0]->expiry.load(std::memory_order_relaxed);
      (e != 0 && e <= t ? expired : flushed) = true;
    }
    if (it) {
      it->refs.fetch_add(1, std::memory_order_relaxed);
      if (touch_expiry) it->expiry = *touch_expiry;
    }
  }
  for (Item* d : dropped) release(d);
  counters_.cmd_get.fetch_add(1, std::memory_order_relaxed);
  if (touch_expiry) counters_.cmd_touch.fetch_add(1, std::memory_order_relaxed);
  if (!it) {
    counters_.get_misses.fetch_add(1, std::memory_order_relaxed);
    if (expired) counters_.get_expired.fetch_add(1, std::memory_order_relaxed);
    if (flushed) counters_.get_flushed.fetch_add(1, std::memory_order_relaxed);
    if (touch_expiry) counters_.touch_misses.fetch_add(1, std::memory_order_relaxed);
    return std::nullopt;
  }
  Pin pin(*this, it);  // the far copy runs without the shard lock
  counters_.get_hits.fetch_add(1, std::memory_order_relaxed);
  if (touch_expiry) counters_.touch_hits.fetch_add(1, std::memory_order_relaxed);
  it->referenced.store(true, std::memory_order_relaxed);
  it->fetched.store(true, std::memory_order_relaxed);
  Value v;
  v.flags = it->flags;
  v.cas = it->cas;
  if (before_far_read_) before_far_read_(key);
  v.data = read_value(*it);
  return v;
}

bool Store::touch(std::string_view key, std::int64_t expiry) {
  Shard& s = shard_of(key);
  std::vector<Item*> dropped;
  bool found;
  {
    Lock g(s.mu);
    Item* it = find_locked(s, key, now(), dropped);
    found = it != nullptr;
    if (it) {
      it->expiry = expiry;
      it->referenced.store(true, std::memory_order_relaxed);
    }
  }
  for (Item* d : dropped) release(d);
  counters_.cmd_touch.fetch_add(1, std::memory_order_relaxed);
  (found ? counters_.touch_hits : counters_.touch_misses).fetch_add(1, std::memory_order_relaxed);
  return found;
}

bool Store::remove(std::string_view key) {
  Shard& s = shard_of(key);
  std::vector<Item*> dropped;
  Item* it;
  {
    Lock g(s.mu);
    it = find_locked(s, key, now(), dropped);
    if (it) unlink_locked(s, it);
  }
  for (Item* d : dropped) release(d);
  (it ? counters_.delete_hits : counters_.delete_misses).fetch_add(1, std::memory_order_relaxed);
  if (it) release(it);
  return it != nullptr;
}

namespace {
// memcached reads a counter as strtoull does: leading white space, digits,
// then white space or the end; anything else (or overflow) is not a number.
bool parse_counter(const std::string& s, std::uint64_t& out) {
  std::size_t i = 0;
  auto space = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r'; };
  while (i < s.size() && space(s[i])) ++i;
  if (i < s.size() && s[i] == '+') ++i;
  const std::size_t start = i;
  out = 0;
  for (; i < s.size() && s[i] >= '0' && s[i] <= '9'; ++i) {
    const std::uint64_t d = static_cast<std::uint64_t>(s[i] - '0');
    if (out > (UINT64_MAX - d) / 10) return false;
    out = out * 10 + d;
  }
  return i > start && (i == s.size() || space(s[i]));
}
}  // namespace

Store::DeltaResult Store::delta(std::string_view key, bool incr, std::uint64_t by, std::uint64_t& result) {
  Shard& s = shard_of(key);
  auto& hits = incr ? counters_.incr_hits : counters_.decr_hits;
  auto& misses = incr ? counters_.incr_misses : counters_.decr_misses;
  for (;;) {
    Item* cur = find_and_ref(s, key);
    if (!cur) {
      misses.fetch_add(1, std::memory_order_relaxed);
      return DeltaResult::NotFound;
    }
    Pin pin(*this, cur);
    std::uint64_t v;
    if (cur->len == 0 || !parse_counter(read_value(*cur), v)) return DeltaResult::NonNumeric;
    v = incr ? v + by : (by > v ? 0 : v - by);  // incr wraps at 2^64, decr stops at 0
    std::string text = std::to_string(v);
    // As memcached: a shorter number keeps the old length, padded with spaces.
    if (text.size() < cur->len) text.resize(cur->len, ' ');
    Item* it = make_item(key, cur->flags, cur->expiry.load(), text);
    if (!it) return DeltaResult::OutOfMemory;
    if (!replace_if_current(s, key, cur, it)) {
      release(it);
      continue;
    }
    counters_.total_items.fetch_sub(1, std::memory_order_relaxed);  // an update, not a new item
    release(cur);
    hits.fetch_add(1, std::memory_order_relaxed);
    result = v;
    return DeltaResult::Ok;
  }
}

void Store::flush(std::int64_t delay) {
  counters_.cmd_flush.fetch_add(1, std::memory_order_relaxed);
  if (delay > 0) {
    flush_time_.store(now() + delay, std::memory_order_relaxed);
    return;
  }
  flush_time_.store(0, std::memory_order_relaxed);
  flush_cas_.store(next_cas_.load(std::memory_order_relaxed) - 1, std::memory_order_relaxed);
  sweep();  // give the memory back now, not a second later
}

std::uint64_t Store::sweep() {
  std::uint64_t n = 0;
  const std::int64_t t = now();
  for (Shard& s : shards_) {
    std::vector<Item*> dropped;
    {
      Lock g(s.mu);
      for (auto f = s.map.begin(); f != s.map.end();) {
        Item* it = f->second;
        ++f;  // unlink_locked erases it
        if (!dead(*it, t)) continue;
        unlink_locked(s, it);
        counters_.reclaimed.fetch_add(1, std::memory_order_relaxed);
        if (!it->fetched.load(std::memory_order_relaxed))
          counters_.expired_unfetched.fetch_add(1, std::memory_order_relaxed);
        dropped.push_back(it);
      }
    }
    for (Item* d : dropped) release(d);
    n += dropped.size();
  }
  return n;
}

void Store::dump(unsigned class_id, unsigned limit,
                 const std::function<void(const std::string&, std::uint32_t, std::int64_t)>& fn) {
  if (class_id < 1 || class_id > kClasses) return;
  struct Entry {
    std::string key;
    std::uint32_t len;
    std::int64_t expiry;
  };
  std::vector<Entry> out;
  const std::int64_t t = now();
  {
    Class& c = classes_[class_id - 1];
    Lock g(c.mu);
    for (Item* it = c.head; it && (limit == 0 || out.size() < limit); it = it->next)
      if (!dead(*it, t)) out.push_back({it->key, it->len, it->expiry.load()});
  }
  for (const Entry& e : out) fn(e.key, e.len, e.expiry);
}

std::uint64_t Store::far_bytes() const {
  Lock g(slabs_mu_);
  return slabs_.size() * kSlab;
}

std::vector<ClassStats> Store::class_stats() const {
  std::vector<ClassStats> out;
  for (unsigned i = 0; i < kClasses; ++i) {
    const Class& c = classes_[i];
    Lock g(c.mu);
    if (c.slabs == 0) continue;
    const std::uint64_t size = std::uint64_t{1} << (i + kMinShift);
    const std::uint64_t total = c.slabs * (kSlab / size);
    out.push_back({i + 1, size, total, total - c.free.size(), c.free.size(), c.slabs, c.items, c.evicted,
                   c.outofmemory});
  }
  return out;
}

void Store::reset_counters() {
  Counters& c = counters_;
  for (auto* a : {&c.get_hits, &c.get_misses, &c.get_expired, &c.get_flushed, &c.cmd_get, &c.cmd_set, &c.cmd_touch,
                  &c.touch_hits, &c.touch_misses, &c.delete_hits, &c.delete_misses, &c.incr_hits, &c.incr_misses,
                  &c.decr_hits, &c.decr_misses, &c.cas_hits, &c.cas_misses, &c.cas_badval, &c.cmd_flush,
                  &c.total_items, &c.evictions, &c.evicted_unfetched, &c.expired_unfetched, &c.reclaimed,
                  &c.outofmemory})
    a->store(0, std::memory_order_relaxed);
}

}  // namespace farmem_kv
