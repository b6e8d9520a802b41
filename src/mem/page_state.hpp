// One atomic 64-bit state word per far page: where the page is and what the
// fault and eviction paths know about it. Every transition is a CAS on this word.
//
//   bits 0-2  kind (Untouched, Resident, Fetching, Evicting, Remote)
//   bit  3    accessed (set on TLB fill; CLOCK clears it)
//   bit  4    dirty (the frame differs from the remote copy)
//   bit  5    has_remote (the memory server holds a copy of this page)
//   bit  6    writing (Evicting: the evictor is copying the frame out; no rescue)
//   bit  7    wanted (Evicting+writing: a core waits for it; keep it resident)
//   bits 8-23 overflow pin count (scopes that ran out of hazard slots)
//   bits 24-63 frame number (Resident, Fetching, Evicting); for a transparent
//             page that is Remote, the eviction clock when it left (evict_stamp)
#pragma once
#include <cstdint>

namespace farmem::mem {

enum class Kind : std::uint64_t {
  Untouched = 0,  // never written: reads as zeros, no round trip
  Resident = 1,   // in a local frame
  Fetching = 2,   // a core is filling a frame; others wait
  Evicting = 3,   // chosen by the evictor; still in its frame and can be rescued
  Remote = 4,     // only on the memory server (slot = page number)
};

namespace ps {
inline constexpr std::uint64_t kKindMask = 0x7;
inline constexpr std::uint64_t kAccessed = 1u << 3;
inline constexpr std::uint64_t kDirty = 1u << 4;
inline constexpr std::uint64_t kHasRemote = 1u << 5;
inline constexpr std::uint64_t kWriting = 1u << 6;
inline constexpr std::uint64_t kWanted = 1u << 7;
inline constexpr unsigned kPinShift = 8;
inline constexpr std::uint64_t kPinOne = std::uint64_t{1} << kPinShift;
inline constexpr std::uint64_t kPinMask = std::uint64_t{0xffff} << kPinShift;
inline constexpr unsigned kFrameShift = 24;

inline Kind kind(std::uint64_t s) { return static_cast<Kind>(s & kKindMask); }
inline std::uint64_t frame(std::uint64_t s) { return s >> kFrameShift; }
inline std::uint64_t pins(std::uint64_t s) { return (s & kPinMask) >> kPinShift; }
inline std::uint64_t with_kind(std::uint64_t s, Kind k) {
  return (s & ~kKindMask) | static_cast<std::uint64_t>(k);
}
inline std::uint64_t make(Kind k, std::uint64_t frame, std::uint64_t flags) {
  return (frame << kFrameShift) | flags | static_cast<std::uint64_t>(k);
}
// The eviction clock (Runtime::evictions) kept in a Remote transparent page's
// word, so its fault can tell how many pages left after it: fewer than the
// budget holds means a page the evictor should have kept (hw_quick_refaults).
inline constexpr std::uint64_t kStampMask = (std::uint64_t{1} << (64 - kFrameShift)) - 1;
inline std::uint64_t evict_stamp(std::uint64_t clock) { return clock & kStampMask; }
inline std::uint64_t evicted_ago(std::uint64_t s, std::uint64_t clock) {
  return (clock - frame(s)) & kStampMask;
}
}  // namespace ps

}  // namespace farmem::mem
