// What farmem-bench's pages hold (--data): compression ratios depend on it, so
// the compressed tier is measured on realistic data, not on flattering zeros
// or hopeless random bytes. Every page's content follows from its number.
//   zeros   one word set (the default; what earlier results were measured on)
//   text    a service's log lines                     (lz4: about 2:1)
//   ints    small integers, a sorted-ish column       (lz4: about 2-3:1)
//   random  random bytes                              (does not compress)
//   mixed   by page: 40% text, 30% ints, 20% zeros, 10% random
#pragma once
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>

namespace bench {

enum class PageData { Zeros, Text, Ints, Random, Mixed };

inline bool parse_page_data(const std::string& s, PageData* out) {
  static const std::pair<const char*, PageData> names[] = {{"zeros", PageData::Zeros}, {"text", PageData::Text},
                                                         {"ints", PageData::Ints},   {"random", PageData::Random},
                                                         {"mixed", PageData::Mixed}};
  for (const auto& [name, kind] : names)
    if (s == name) {
      *out = kind;
      return true;
    }
  return false;
}

inline std::uint64_t mix64(std::uint64_t x) {  // splitmix64's finalizer
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Fills the 512 words of page `page` (fresh, zero memory) and returns their sum (mod 2^64).
inline std::uint64_t fill_page(PageData kind, std::uint64_t page, std::uint64_t* w) {
  if (kind == PageData::Mixed) {
    const unsigned r = static_cast<unsigned>(mix64(page * 7 + 1) % 10);
    kind = r < 4 ? PageData::Text : r < 7 ? PageData::Ints : r < 9 ? PageData::Zeros : PageData::Random;
  }
  std::uint64_t rng = mix64(page + 0x51ed);
  auto next = [&rng] { return rng = mix64(rng); };
  switch (kind) {
    case PageData::Zeros:
    case PageData::Mixed:
      w[0] = 1;  // the rest of a fresh page is zero already
      return 1;
    case PageData::Text: {  // a service's log: timestamps, levels, paths, numbers
      static const char* const levels[] = {"INFO", "INFO", "INFO", "DEBUG", "WARN"};
      static const char* const paths[] = {"/api/items", "/api/users", "/static/app.js", "/api/orders", "/health"};
      char* c = reinterpret_cast<char*>(w);
      std::size_t at = 0;
      std::uint64_t t = 1764686913 + page * 40;
      while (at < 4096) {
        char line[160];
        t += next() % 3;
        const std::uint64_t r = next();
        const int n = std::snprintf(line, sizeof line, "%llu.%03llu %s request %llu served %s/%llu in %llu ms\n",
                                    static_cast<unsigned long long>(t), static_cast<unsigned long long>(r % 1000),
                                    levels[(r >> 10) % 5], static_cast<unsigned long long>((r >> 13) % 100000),
                                    paths[(r >> 30) % 5], static_cast<unsigned long long>((r >> 33) % 10000),
                                    static_cast<unsigned long long>((r >> 47) % 200));
        for (int i = 0; i < n && at < 4096; ++i) c[at++] = line[i];
      }
      break;
    }
    case PageData::Ints: {
      std::uint64_t v = page * 1000;
      for (unsigned i = 0; i < 512; ++i) w[i] = v += next() % 64;
      break;
    }
    case PageData::Random:
      for (unsigned i = 0; i < 512; ++i) w[i] = next();
      break;
  }
  std::uint64_t sum = 0;
  for (unsigned i = 0; i < 512; ++i) sum += w[i];
  return sum;
}

}  // namespace bench
