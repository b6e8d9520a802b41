// The far-memory key-value store (store.hpp).
#include "store.hpp"

#include <functional>

#include "farmem/far.hpp"

namespace farmem_kv {

Store::Store(std::uint64_t capacity) : capacity_(capacity) {}

Store::~Store() {
  for (std::uint64_t s : slabs_) farmem::far_free(s, kSlab);
}

unsigned Store::class_of(std::size_t len) {
  unsigned shift = kMinShift;
  while ((std::size_t{1} << shift) < len) ++shift;
  return shift - kMinShift;
}

Store::Shard& Store::shard_of(const std::string& key) {
  return shards_[std::hash<std::string>{}(key) % kShards];
}

// A free chunk of the class, carving a new slab when the class has none.
std::optional<std::uint64_t> Store::alloc_chunk(unsigned cls) {
  Class& c = classes_[cls];
  {
    std::lock_guard<farmem::uthread::Mutex> g(c.mu);
    if (!c.free.empty()) {
      std::uint64_t a = c.free.back();
      c.free.pop_back();
      return a;
    }
  }
  std::uint64_t slab;
  {
    std::lock_guard<farmem::uthread::Mutex> g(slabs_mu_);
    if ((slabs_.size() + 1) * kSlab > capacity_) return std::nullopt;
    try {
      slab = farmem::far_alloc(kSlab);
    } catch (const farmem::Error&) {
      return std::nullopt;  // far memory itself is exhausted
    }
    slabs_.push_back(slab);
  }
  const std::uint64_t chunk = std::uint64_t{1} << (cls + kMinShift);
  std::lock_guard<farmem::uthread::Mutex> g(c.mu);
  for (std::uint64_t off = kSlab; off > chunk;) c.free.push_back(slab + (off -= chunk));
  return slab;
}

void Store::free_chunk(unsigned cls, std::uint64_t addr) {
  std::lock_guard<farmem::uthread::Mutex> g(classes_[cls].mu);
  classes_[cls].free.push_back(addr);
}

Store::SetResult Store::set(const std::string& key, std::uint32_t flags, const std::string& data) {
  if (data.size() > kMaxValue) return SetResult::TooLarge;
  const unsigned cls = class_of(data.size());
  std::optional<std::uint64_t> addr = alloc_chunk(cls);
  if (!addr) return SetResult::OutOfMemory;
  farmem::copy_to_far(*addr, data.data(), data.size());  // before it is visible
  Item old{};
  bool replaced = false;
  {
    Shard& s = shard_of(key);
    std::lock_guard<farmem::uthread::Mutex> g(s.mu);
    auto [it, inserted] = s.map.try_emplace(key, Item{*addr, static_cast<std::uint32_t>(data.size()), flags, cls});
    if (!inserted) {
      old = it->second;
      replaced = true;
      s.bytes -= old.len;
      it->second = Item{*addr, static_cast<std::uint32_t>(data.size()), flags, cls};
    }
    s.bytes += data.size();
  }
  if (replaced) free_chunk(old.cls, old.addr);  // no reader holds it: gets copy under the shard lock
  return SetResult::Stored;
}

std::optional<Value> Store::get(const std::string& key) {
  Shard& s = shard_of(key);
  std::lock_guard<farmem::uthread::Mutex> g(s.mu);
  auto it = s.map.find(key);
  if (it == s.map.end()) return std::nullopt;
  Value v;
  v.flags = it->second.flags;
  v.data.resize(it->second.len);
  farmem::copy_from_far(v.data.data(), it->second.addr, it->second.len);
  return v;
}

bool Store::remove(const std::string& key) {
  Item old;
  {
    Shard& s = shard_of(key);
    std::lock_guard<farmem::uthread::Mutex> g(s.mu);
    auto it = s.map.find(key);
    if (it == s.map.end()) return false;
    old = it->second;
    s.bytes -= old.len;
    s.map.erase(it);
  }
  free_chunk(old.cls, old.addr);
  return true;
}

std::uint64_t Store::items() const {
  std::uint64_t n = 0;
  for (const Shard& s : shards_) {
    std::lock_guard<farmem::uthread::Mutex> g(s.mu);
    n += s.map.size();
  }
  return n;
}

std::uint64_t Store::value_bytes() const {
  std::uint64_t n = 0;
  for (const Shard& s : shards_) {
    std::lock_guard<farmem::uthread::Mutex> g(s.mu);
    n += s.bytes;
  }
  return n;
}

std::uint64_t Store::far_bytes() const {
  std::lock_guard<farmem::uthread::Mutex> g(slabs_mu_);
  return slabs_.size() * kSlab;
}

}  // namespace farmem_kv
