// The compression layer's codecs (FARMEM_COMPRESS): lz4 and zstd from their
// Debian libraries, one page at a time. A Compressor is used by one thread only
// (it keeps the library's context), so every queue pair has its own.
#pragma once
#include <cstddef>
#include <memory>
#include <string>

namespace farmem::tier {

struct CompressSpec {
  enum class Kind { None, Lz4, Zstd } kind = Kind::None;
  int level = 0;  // zstd's level (1-19); lz4 has none
  std::string name() const;
};

// "none", "lz4", "zstd" or "zstd:LEVEL"; throws farmem::Error naming the
// problem and the fix.
CompressSpec parse_compress(const std::string& text);

class Compressor {
 public:
  explicit Compressor(const CompressSpec& spec);
  ~Compressor();
  Compressor(const Compressor&) = delete;
  Compressor& operator=(const Compressor&) = delete;

  // Compresses the page (4 KiB, or a pool's piece of one: page_len bytes) into
  // out (capacity cap). Returns the compressed size, or 0 if it does not fit in
  // cap (the page does not shrink enough).
  std::size_t compress(const void* page, void* out, std::size_t cap, std::size_t page_len = 4096);
  // Decompresses len bytes into the page. False unless exactly page_len bytes
  // came out: the stored piece is damaged.
  bool decompress(const void* in, std::size_t len, void* page, std::size_t page_len = 4096);

 private:
  CompressSpec spec_;
  struct Zstd;
  std::unique_ptr<Zstd> zstd_;
};

}  // namespace farmem::tier
