// Page protection (FARMEM_PROTECT=aead): the process's key and, per far page,
// the version and tag of the copy that was last sent far. AES-256-GCM through
// OpenSSL's EVP; the nonce is the far page and its version, so a server that
// hands back another page's bytes (a move) or an older copy of the same page
// (a replay) fails the check, as does any altered byte.
#pragma once
#include <openssl/evp.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>

namespace farmem {
struct Config;
}

namespace farmem::tier {

// Throws farmem::Error for a value that is not none or aead.
bool parse_protect(const std::string& v);

class PageSeal {
 public:
  static constexpr std::size_t kTag = 16;
  // Tables for npages far pages (NORESERVE: memory only where pages went far)
  // and a fresh random key, which never leaves this process's memory.
  explicit PageSeal(std::uint64_t npages);
  ~PageSeal();
  PageSeal(const PageSeal&) = delete;
  PageSeal& operator=(const PageSeal&) = delete;

  // The version a new copy of `page` is sealed with. Taken when the write is
  // posted and never given out again, so no nonce is ever used twice, even if
  // that write fails or is dropped.
  std::uint64_t next_version(std::uint64_t page) {
    return table_[page].version.fetch_add(1, std::memory_order_relaxed) + 1;
  }
  // The copy sealed with `version` and `tag` is now the one on the server.
  void commit(std::uint64_t page, std::uint64_t version, const unsigned char* tag);
  // The version and tag a copy read back must match.
  std::uint64_t version(std::uint64_t page) const { return table_[page].committed.load(std::memory_order_acquire); }
  const unsigned char* tag(std::uint64_t page) const { return table_[page].tag; }
  std::uint64_t pages() const { return npages_; }

  // One per queue pair (a queue pair is used by one thread): the cipher
  // contexts, keyed once.
  class Cipher {
   public:
    explicit Cipher(const PageSeal& seal);
    ~Cipher();
    Cipher(const Cipher&) = delete;
    Cipher& operator=(const Cipher&) = delete;
    // Encrypts len bytes of far page `page` (in and out may be the same) and
    // writes the tag.
    void seal(std::uint64_t page, std::uint64_t version, const void* in, void* out, std::size_t len,
              unsigned char* tag);
    // Decrypts and verifies; false (and out is garbage) if anything was altered,
    // replayed or moved.
    bool open(std::uint64_t page, std::uint64_t version, const void* in, void* out, std::size_t len,
              const unsigned char* tag);

   private:
    EVP_CIPHER_CTX* enc_;
    EVP_CIPHER_CTX* dec_;
  };

 private:
  struct Entry {
    std::atomic<std::uint64_t> version;    // the last version handed out
    std::atomic<std::uint64_t> committed;  // the version of the copy on the server
    unsigned char tag[kTag];
  };
  static_assert(sizeof(Entry) == 32);
  const std::uint64_t npages_;
  Entry* const table_;
  unsigned char* const key_;  // its own page, left out of core dumps
};

}  // namespace farmem::tier
