// Helpers shared by the far-memory tests.
#pragma once
#include <cstdint>
#include <cstdlib>
#include <string>

#include "farmem/runtime.hpp"

namespace farmem::test {

#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
inline constexpr bool kSanitized = true;
#else
inline constexpr bool kSanitized = false;
#endif

// A short run: under the sanitizers, or with FARMEM_TEST_SHORT set (the
// release build's repeats of a long test in its other modes, which need the
// races more than the length).
inline bool short_run() { return kSanitized || std::getenv("FARMEM_TEST_SHORT") != nullptr; }

// Test sizes scale down in a short run; FARMEM_TEST_BYTES overrides.
inline std::uint64_t test_bytes(std::uint64_t normal, std::uint64_t sanitized) {
  if (const char* v = std::getenv("FARMEM_TEST_BYTES")) return farmem::parse_size(v, "FARMEM_TEST_BYTES");
  return short_run() ? sanitized : normal;
}

// A value that depends on the word index and a version: a page landing in the
// wrong place, torn, or stale shows up as a mismatch.
inline std::uint64_t mix(std::uint64_t i, std::uint64_t v) {
  std::uint64_t x = i * 0x9E3779B97F4A7C15ull ^ (v + 0x632BE59BD9B4E019ull);
  x ^= x >> 31;
  x *= 0xBF58476D1CE4E5B9ull;
  return x ^ (x >> 29);
}

struct Rng {
  std::uint64_t s;
  explicit Rng(std::uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull | 1) {}
  std::uint64_t next() {
    s ^= s >> 12; s ^= s << 25; s ^= s >> 27;
    return s * 0x2545F4914F6CDD1Dull;
  }
};

}  // namespace farmem::test
