// lz4 (LZ4_compress_default / LZ4_decompress_safe) and zstd (one context per
// Compressor, reused for every page) behind Compressor.
#include "tier/compressor.hpp"

#include <lz4.h>
#include <zstd.h>

#include "farmem/runtime.hpp"

namespace farmem::tier {

namespace {
}

std::string CompressSpec::name() const {
  switch (kind) {
    case Kind::None: return "none";
    case Kind::Lz4: return "lz4";
    case Kind::Zstd: return "zstd:" + std::to_string(level);
  }
  return "?";
}

CompressSpec parse_compress(const std::string& text) {
  CompressSpec s;
  if (text.empty() || text == "none") return s;
  if (text == "lz4") {
    s.kind = CompressSpec::Kind::Lz4;
    return s;
  }
  if (text == "zstd" || text.rfind("zstd:", 0) == 0) {
    s.kind = CompressSpec::Kind::Zstd;
    s.level = 1;  // fast: the evictor compresses every page it writes back
    if (text.size() > 4) {
      const std::string lv = text.substr(5);
      char* end = nullptr;
      long v = std::strtol(lv.c_str(), &end, 10);
      if (lv.empty() || *end != '\0' || v < 1 || v > ZSTD_maxCLevel())
        throw Error("FARMEM_COMPRESS=" + text + ": the zstd level must be 1-" +
                    std::to_string(ZSTD_maxCLevel()) + " (zstd:3, for example)");
      s.level = static_cast<int>(v);
    }
    return s;
  }
  throw Error("FARMEM_COMPRESS=" + text + ": unknown codec; use none, lz4, zstd or zstd:LEVEL");
}

struct Compressor::Zstd {
  ZSTD_CCtx* c = ZSTD_createCCtx();
  ZSTD_DCtx* d = ZSTD_createDCtx();
  ~Zstd() {
    ZSTD_freeCCtx(c);
    ZSTD_freeDCtx(d);
  }
};

Compressor::Compressor(const CompressSpec& spec) : spec_(spec) {
  if (spec_.kind == CompressSpec::Kind::Zstd) zstd_ = std::make_unique<Zstd>();
}

Compressor::~Compressor() = default;

std::size_t Compressor::compress(const void* page, void* out, std::size_t cap, std::size_t len) {
  if (spec_.kind == CompressSpec::Kind::Lz4) {
    int n = LZ4_compress_default(static_cast<const char*>(page), static_cast<char*>(out), static_cast<int>(len),
                                 static_cast<int>(cap));
    return n > 0 ? static_cast<std::size_t>(n) : 0;
  }
  if (spec_.kind == CompressSpec::Kind::Zstd) {
    std::size_t n = ZSTD_compressCCtx(zstd_->c, out, cap, page, len, spec_.level);
    return ZSTD_isError(n) ? 0 : n;
  }
  return 0;
}

bool Compressor::decompress(const void* in, std::size_t len, void* page, std::size_t page_len) {
  if (spec_.kind == CompressSpec::Kind::Lz4)
    return LZ4_decompress_safe(static_cast<const char*>(in), static_cast<char*>(page), static_cast<int>(len),
                               static_cast<int>(page_len)) == static_cast<int>(page_len);
  if (spec_.kind == CompressSpec::Kind::Zstd) {
    std::size_t n = ZSTD_decompressDCtx(zstd_->d, page, page_len, in, len);
    return !ZSTD_isError(n) && n == page_len;
  }
  return false;
}

}  // namespace farmem::tier
