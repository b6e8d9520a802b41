// Redundancy schemes and the Reed-Solomon codec (ISA-L's ec_* and crc32_iscsi).
// Why a page is cut in K pieces rather than K pages coded together: a page is
// evicted alone, so its parity must not depend on pages that stay local
// (Hydra, FAST'22, does the same).
#include "tier/redundancy.hpp"

#include <isa-l/crc.h>
#include <isa-l/erasure_code.h>

#include <cstring>

#include "farmem/runtime.hpp"

namespace farmem::tier {

std::string Scheme::name() const {
  if (m == 0 && !replicas) return "none";
  if (replicas) return "replicas:" + std::to_string(m + 1);
  return "ec:" + std::to_string(k) + "+" + std::to_string(m);
}

namespace {
bool parse_count(const std::string& s, unsigned* out) {
  if (s.empty() || s.size() > 3 || s.find_first_not_of("0123456789") != std::string::npos) return false;
  *out = static_cast<unsigned>(std::stoul(s));
  return true;
}
}  // namespace

Scheme parse_scheme(const std::string& text) {
  const std::string what = "FARMEM_REDUNDANCY='" + text + "'";
  Scheme s;
  if (text == "none" || text.empty()) return s;
  if (text.rfind("replicas:", 0) == 0) {
    unsigned n = 0;
    if (!parse_count(text.substr(9), &n) || n < 1 || n > kMaxPieces)
      throw Error(what + ": give replicas:N with N from 1 to 15 (copies of each page)");
    s.replicas = true;
    s.m = n - 1;
    return s;
  }
  if (text.rfind("ec:", 0) == 0) {
    const std::string rest = text.substr(3);
    const std::size_t plus = rest.find('+');
    unsigned k = 0, m = 0;
    if (plus == std::string::npos || !parse_count(rest.substr(0, plus), &k) || !parse_count(rest.substr(plus + 1), &m))
      throw Error(what + ": give ec:K+M, K data and M parity pieces, as in ec:2+1");
    if (k != 1 && k != 2 && k != 4 && k != 8)
      throw Error(what + ": K must be 1, 2, 4 or 8 (a page is cut in K equal pieces); try ec:2+1 or ec:4+2");
    if (m < 1 || k + m > kMaxPieces)
      throw Error(what + ": M must be at least 1 and K+M at most 15");
    s.k = k;
    s.m = m;
    return s;
  }
  throw Error(what + " is not none, replicas:N or ec:K+M");
}

Codec::Codec(const Scheme& s) : s_(s) {
  const int k = static_cast<int>(s.k), rows = static_cast<int>(s.k + s.m);
  matrix_.resize(static_cast<std::size_t>(rows * k));
  // Cauchy: every k x k submatrix is invertible, so any k pieces decode.
  gf_gen_cauchy1_matrix(matrix_.data(), rows, k);
  if (s.m > 0 && !s.replicas) {
    tables_.resize(static_cast<std::size_t>(32 * k * static_cast<int>(s.m)));
    ec_init_tables(k, static_cast<int>(s.m), &matrix_[static_cast<std::size_t>(k * k)], tables_.data());
  }
}

void Codec::encode(const unsigned char* page, unsigned char* const* parity) {
  const std::size_t len = s_.piece_bytes();
  if (s_.replicas || s_.k == 1) {  // every piece is the page
    for (unsigned j = 0; j < s_.m; ++j) std::memcpy(parity[j], page, len);
    return;
  }
  unsigned char* data[8];
  for (unsigned i = 0; i < s_.k; ++i) data[i] = const_cast<unsigned char*>(page) + i * len;
  ec_encode_data(static_cast<int>(len), static_cast<int>(s_.k), static_cast<int>(s_.m), tables_.data(), data,
                 const_cast<unsigned char**>(parity));
}

bool Codec::decode(const unsigned* have, const unsigned char* const* pieces, unsigned char* page) {
  const unsigned k = s_.k;
  const std::size_t len = s_.piece_bytes();
  if (s_.replicas || k == 1) {
    std::memcpy(page, pieces[0], len);
    return true;
  }
  // The rows of the pieces we have, inverted, give the data from them.
  unsigned char b[8 * 8], inv[8 * 8];
  for (unsigned r = 0; r < k; ++r)
    std::memcpy(&b[r * k], &matrix_[static_cast<std::size_t>(have[r]) * k], k);
  if (gf_invert_matrix(b, inv, static_cast<int>(k)) != 0) return false;
  unsigned char tables[32 * 8 * 8];
  ec_init_tables(static_cast<int>(k), static_cast<int>(k), inv, tables);
  unsigned char* out[8];
  for (unsigned i = 0; i < k; ++i) out[i] = page + i * len;
  ec_encode_data(static_cast<int>(len), static_cast<int>(k), static_cast<int>(k), tables,
                 const_cast<unsigned char**>(pieces), out);
  return true;
}

std::uint32_t page_checksum(const void* page, std::size_t len) {
  return crc32_iscsi(static_cast<unsigned char*>(const_cast<void*>(page)), static_cast<int>(len), 0xffffffffu);
}

}  // namespace farmem::tier
