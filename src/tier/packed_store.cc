// The size-class piece allocator of the compressed tier (see packed_store.hpp).
#include "tier/packed_store.hpp"

#include <algorithm>
#include <bit>

namespace farmem::tier {

namespace {
constexpr std::uint64_t kPage = 4096;
}

PackedStore::PackedStore(std::uint32_t unit, std::uint64_t space)
    : unit_(unit), n_(static_cast<unsigned>(kPage / unit)), space_(space), partial_(n_ + 1),
      free_spans_(n_ + 1) {}

std::uint64_t PackedStore::alloc(unsigned units, std::uint64_t owner, bool* sync) {
  std::lock_guard<std::mutex> g(mu_);
  *sync = false;
  piece_bytes_ += std::uint64_t{units} * unit_;
  std::vector<std::uint64_t>& part = partial_[units];
  if (!part.empty()) {  // a hole in a partly used span first
    const std::uint64_t base = part.back();
    Span& s = spans_[base];
    const unsigned slot = static_cast<unsigned>(std::countr_one(s.used));
    s.used |= 1u << slot;
    s.owner[slot] = owner;
    if (std::popcount(s.used) == static_cast<int>(n_)) drop_partial(units, s);
    return base + std::uint64_t{slot} * units * unit_;
  }
  const std::uint64_t bytes = std::uint64_t{units} * kPage;  // a new span: u pages, n pieces
  // A span given back earlier, of this size or cut from a larger one (the
  // rest goes back to its own list); else fresh address space.
  std::uint64_t base = UINT64_MAX;
  for (unsigned pages = units; pages <= n_ && base == UINT64_MAX; ++pages) {
    if (free_spans_[pages].empty()) continue;
    base = free_spans_[pages].back();
    free_spans_[pages].pop_back();
    if (pages > units) free_spans_[pages - units].push_back(base + bytes);
  }
  if (base == UINT64_MAX) {
    if (unsynced_pages_ >= 64 || (bump_ + bytes > space_ && !unsynced_.empty())) {
      *sync = true;  // enough given back to be worth a round trip
      piece_bytes_ -= std::uint64_t{units} * unit_;
      return UINT64_MAX;
    }
    if (bump_ + bytes > space_) {
      piece_bytes_ -= std::uint64_t{units} * unit_;
      return UINT64_MAX;
    }
    base = bump_;
    bump_ += bytes;
  }
  span_bytes_ += bytes;
  Span& s = spans_[base];
  s.units = units;
  s.used = 1;
  s.owner[0] = owner;
  if (n_ > 1) add_partial(base, s);
  return base;
}

void PackedStore::add_partial(std::uint64_t base, Span& s) {
  s.partial_pos = static_cast<std::uint32_t>(partial_[s.units].size());
  partial_[s.units].push_back(base);
}

PackedStore::Range PackedStore::erase_span(std::map<std::uint64_t, Span>::iterator it) {
  const Range r{it->first, std::uint64_t{it->second.units} * kPage};
  drop_partial(it->second.units, it->second);
  spans_.erase(it);
  span_bytes_ -= r.len;
  return r;
}

void PackedStore::drop_partial(unsigned units, Span& s) {
  std::vector<std::uint64_t>& part = partial_[units];
  const std::uint32_t pos = s.partial_pos;
  if (pos == UINT32_MAX) return;
  if (pos + 1 != part.size()) {  // swap the last one into its place
    part[pos] = part.back();
    spans_[part[pos]].partial_pos = pos;
  }
  part.pop_back();
  s.partial_pos = UINT32_MAX;
}

PackedStore::Range PackedStore::free(std::uint64_t off, unsigned units) {
  std::lock_guard<std::mutex> g(mu_);
  const std::uint64_t span_bytes = std::uint64_t{units} * kPage;
  auto it = spans_.upper_bound(off);  // the span that starts at or before off
  if (it == spans_.begin()) return {};
  --it;
  const std::uint64_t base = it->first;
  if (off >= base + span_bytes) return {};
  const unsigned slot = static_cast<unsigned>((off - base) / (std::uint64_t{units} * unit_));
  if (it == spans_.end() || it->second.units != units || !(it->second.used & (1u << slot))) return {};
  Span& s = it->second;
  piece_bytes_ -= std::uint64_t{units} * unit_;
  const bool was_full = std::popcount(s.used) == static_cast<int>(n_);
  s.used &= ~(1u << slot);
  if (s.used == 0 && !s.draining) return erase_span(it);  // empty: give it back to the server
  if (was_full && !s.draining) add_partial(base, s);
  return {};
}

std::vector<PackedStore::Piece> PackedStore::drain(std::size_t max_spans, std::vector<std::uint64_t>* spans) {
  std::lock_guard<std::mutex> g(mu_);
  std::vector<Piece> out;
  for (unsigned units = 1; units < partial_.size() && spans->size() < max_spans; ++units) {
    // The class's partly used spans, emptiest first. One is drained only if
    // its pieces, and those of the spans drained before it, fit in the holes
    // of the spans that stay: every move then fills a hole, and every drained
    // span goes back to the server whole.
    std::vector<std::pair<int, std::uint64_t>> part;
    std::uint64_t holes = 0;
    for (std::uint64_t base : partial_[units]) {
      const int used = std::popcount(spans_[base].used);
      part.emplace_back(used, base);
      holes += n_ - static_cast<unsigned>(used);
    }
    std::sort(part.begin(), part.end());
    std::uint64_t moving = 0;
    for (const auto& [used, base] : part) {
      if (spans->size() >= max_spans) break;
      holes -= n_ - static_cast<unsigned>(used);  // this span's holes are not a destination
      if (holes < moving + static_cast<unsigned>(used)) break;
      moving += static_cast<unsigned>(used);
      Span& s = spans_[base];
      drop_partial(units, s);
      s.draining = true;
      spans->push_back(base);
      for (unsigned slot = 0; slot < n_; ++slot)
        if (s.used & (1u << slot)) out.push_back({base + std::uint64_t{slot} * units * unit_, s.owner[slot], units});
    }
  }
  return out;
}

PackedStore::Range PackedStore::undrain(std::uint64_t span) {
  std::lock_guard<std::mutex> g(mu_);
  auto it = spans_.find(span);
  if (it == spans_.end() || !it->second.draining) return {};
  Span& s = it->second;
  s.draining = false;
  if (s.used == 0) return erase_span(it);
  if (std::popcount(s.used) < static_cast<int>(n_)) add_partial(span, s);
  return {};
}

void PackedStore::given_back(Range r) {
  std::lock_guard<std::mutex> g(mu_);
  const unsigned pages = static_cast<unsigned>(r.len / kPage);
  unsynced_.push_back({r.off, pages, given_back_++});
  unsynced_pages_ += pages;
}

std::uint64_t PackedStore::to_sync() const {
  std::lock_guard<std::mutex> g(mu_);
  return given_back_;
}

void PackedStore::synced(std::uint64_t mark) {
  std::lock_guard<std::mutex> g(mu_);
  while (!unsynced_.empty() && unsynced_.front().seq < mark) {
    free_spans_[unsynced_.front().pages].push_back(unsynced_.front().off);
    unsynced_pages_ -= unsynced_.front().pages;
    unsynced_.pop_front();
  }
}

PackedStore::Usage PackedStore::usage() const {
  std::lock_guard<std::mutex> g(mu_);
  Usage u;
  u.spans = spans_.size();
  u.span_bytes = span_bytes_;
  u.piece_bytes = piece_bytes_;
  return u;
}

}  // namespace farmem::tier
