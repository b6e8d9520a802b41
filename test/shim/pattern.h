/* Self-checking byte patterns for the shim's C test programs (shim_check.c,
 * syscall_check.c). The includer defines FAIL(...) first: it names the program. */
#include <stddef.h>
#include <stdint.h>

static uint64_t mix(uint64_t x) {
  x ^= x >> 33; x *= 0xff51afd7ed558ccdull; x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ull; x ^= x >> 33;
  return x;
}
static void fill(void* p, size_t n, uint64_t seed) {
  uint64_t* w = p;
  for (size_t i = 0; i < n / 8; ++i) w[i] = mix(seed + i);
}
static void check(const void* p, size_t n, uint64_t seed, const char* what) {
  const uint64_t* w = p;
  for (size_t i = 0; i < n / 8; ++i)
    if (w[i] != mix(seed + i)) FAIL("%s: word %zu of %zu differs", what, i, n / 8);
}
