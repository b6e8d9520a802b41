// Redundancy of a far page across the pool's servers: a scheme (none,
// replicas:N, ec:K+M) and the Reed-Solomon codec that cuts a page into K data
// pieces and M parity pieces (Intel ISA-L). Replicas are the K=1 case: every
// piece is the whole page. Any K pieces rebuild the page.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace farmem::tier {

constexpr unsigned kMaxPieces = 15;  // a page's location word holds 15 four-bit server numbers

struct Scheme {
  unsigned k = 1, m = 0;  // data and parity pieces of a page
  bool replicas = false;  // parsed from replicas:N (k = 1, m = N - 1)
  unsigned pieces() const { return k + m; }
  std::size_t piece_bytes() const { return 4096 / k; }
  std::string name() const;
};

// "none", "replicas:N" or "ec:K+M"; throws farmem::Error naming the problem and
// the fix. K must divide a page into pieces the wire carries: 1, 2, 4 or 8.
Scheme parse_scheme(const std::string& text);

// Encodes and decodes one page. Not thread-safe; one per queue pair.
class Codec {
 public:
  explicit Codec(const Scheme& s);
  const Scheme& scheme() const { return s_; }
  // parity[j] (j < m) from the page's k data pieces (the page itself, cut in k).
  void encode(const unsigned char* page, unsigned char* const* parity);
  // Rebuilds the page from k pieces: have[i] is the piece number of pieces[i]
  // (0..k-1 data, k.. parity), all distinct. Returns false if they cannot.
  bool decode(const unsigned* have, const unsigned char* const* pieces, unsigned char* page);

 private:
  Scheme s_;
  std::vector<unsigned char> matrix_;  // (k+m) x k, identity on top
  std::vector<unsigned char> tables_;  // ISA-L's expanded tables for the parity rows
};

// CRC-32C of a page: the pool checks every page it reads back against the one it wrote.
std::uint32_t page_checksum(const void* page, std::size_t len = 4096);

}  // namespace farmem::tier
