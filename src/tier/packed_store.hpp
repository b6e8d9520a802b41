// Where compressed pages are stored in the memory server's address space: a
// size-class allocator of pieces (in the spirit of Linux's zsmalloc). A piece
// of u units (unit = 256 or 512 bytes, see the transport) lives in a span of
// u remote pages that holds exactly n = 4096/unit pieces of that class, so a
// span wastes nothing beyond rounding a piece up to its unit. Pieces may cross
// page boundaries inside their span; transports carry unit-aligned ranges.
//
// Holes are refilled first (an allocation takes a free slot of a partly used
// span before a new span), and a span whose last piece is freed goes back to
// the server (discard), so the server's memory follows the stored bytes, not
// the page count. Holes that nothing refills (the far footprint shrank) are
// reclaimed by compaction: drain() hands out the live pieces of the sparsest
// spans, with the page each belongs to, and keeps new pieces out of those spans
// while the compressed tier moves them elsewhere. All of it sits behind one
// mutex: the evictor and the compactor allocate, and frees come with write
// completions, far frees and moves.
#pragma once
#include <array>
#include <cstdint>
#include <deque>
#include <mutex>
#include <map>
#include <vector>

namespace farmem::tier {

class PackedStore {
 public:
  // unit: bytes per unit (a power of two, 256-4096); space: bytes of remote
  // address space the store may use, from offset 0.
  PackedStore(std::uint32_t unit, std::uint64_t space);

  std::uint32_t unit() const { return unit_; }
  unsigned units_for(std::size_t bytes) const { return static_cast<unsigned>((bytes + unit_ - 1) / unit_); }

  // A remote offset for a piece of `units` units, or UINT64_MAX: when *sync
  // is set, spans given back (discarded) are waiting to be reused: the caller
  // makes sure those discards reached the server (Transport::sync_discards),
  // calls synced() and asks again; otherwise the address space is used up.
  // Reusing spans keeps the address space, and the server's page tables, small.
  // owner: the page the piece holds (what drain() reports).
  std::uint64_t alloc(unsigned units, std::uint64_t owner, bool* sync);
  // A mark for the spans given back so far, which the caller is about to make
  // sure of, and then that it did: only spans given back before the mark become
  // reusable (others may be given back, and their discards sent, while it
  // waits). Marks, not counts: two threads may sync at once (the evictor and
  // the compactor), and a stale mark moves nothing twice.
  std::uint64_t to_sync() const;
  void synced(std::uint64_t mark);
  // Frees the piece of `units` units at off. Returns the remote range of a
  // span that became empty (len 0 if none): the caller discards it, then
  // hands it back with given_back() to be reused once synced.
  struct Range {
    std::uint64_t off = 0, len = 0;
  };
  Range free(std::uint64_t off, unsigned units);
  void given_back(Range r);

  // Compaction. Up to max_spans partly used spans, the emptiest of each class
  // first and only as many as the holes of the class's other spans can take,
  // are taken out of the allocation lists (no new piece goes there, and a
  // draining span is kept even when emptied, so no slot of it is reused while
  // its pieces move) and their live pieces returned. undrain() puts a span
  // that kept some back in the lists, or returns the range of an empty one,
  // which the caller discards and hands to given_back().
  struct Piece {
    std::uint64_t off, owner;
    unsigned units;
  };
  std::vector<Piece> drain(std::size_t max_spans, std::vector<std::uint64_t>* spans);
  Range undrain(std::uint64_t span);

  struct Usage {
    std::uint64_t spans = 0, span_bytes = 0, piece_bytes = 0;  // span_bytes - piece_bytes: the holes
  };
  Usage usage() const;

  // The lock is held across fork so the child's copy is consistent.
  void lock() { mu_.lock(); }
  void unlock() { mu_.unlock(); }

 private:
  struct Span {
    std::uint32_t used = 0;  // bitmap of its n slots
    unsigned units = 0;
    std::uint32_t partial_pos = UINT32_MAX;  // index in partial_[units], or none
    bool draining = false;                   // being compacted: takes no new piece
    std::array<std::uint64_t, 16> owner{};   // the page in each slot (n <= 16)
  };
  void drop_partial(unsigned units, Span& s);
  void add_partial(std::uint64_t base, Span& s);  // s has a free slot again
  // Forgets an empty span; returns its range, for the caller to give back.
  Range erase_span(std::map<std::uint64_t, Span>::iterator it);

  const std::uint32_t unit_;
  const unsigned n_;  // pieces per span
  const std::uint64_t space_;
  mutable std::mutex mu_;
  std::uint64_t bump_ = 0;  // remote bytes handed out as spans so far
  std::map<std::uint64_t, Span> spans_;                 // by base offset
  std::vector<std::vector<std::uint64_t>> partial_;     // [units]: spans with a free slot
  std::vector<std::vector<std::uint64_t>> free_spans_;  // [pages]: spans given back, safe to reuse
  struct Unsynced {
    std::uint64_t off;
    unsigned pages;
    std::uint64_t seq;  // given_back_'s count when it came
  };
  std::deque<Unsynced> unsynced_;  // given back, discard maybe still on its way; by seq
  std::uint64_t unsynced_pages_ = 0, given_back_ = 0;
  std::uint64_t piece_bytes_ = 0, span_bytes_ = 0;
};

}  // namespace farmem::tier
