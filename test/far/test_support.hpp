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

// Test sizes scale down under sanitizers; FARMEM_TEST_BYTES overrides.
inline std::uint64_t test_bytes(std::uint64_t normal, std::uint64_t sanitized) {
  if (const char* v = std::getenv("FARMEM_TEST_BYTES")) return farmem::parse_size(v, "FARMEM_TEST_BYTES");
  return kSanitized ? sanitized : normal;
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
