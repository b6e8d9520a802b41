// The key, the per-page table of versions and tags, and the AES-256-GCM calls
// (OpenSSL EVP) that seal a page's bytes on the way out and open them on the
// way in.
//
// Nonce (12 bytes): the far page number (5 bytes, up to 2^40 pages) and the
// page's version (7 bytes). Versions only grow, and a new one is taken for
// every write, so a nonce is never used twice under the process's key. The
// associated data is the page's far address again (a moved page fails even if
// a nonce scheme changes). Cost: 32 bytes a far page (two versions and the
// tag), 8 MiB per GiB of far memory, in a NORESERVE table touched only where
// pages went far.
#include "tier/page_seal.hpp"

#include <openssl/rand.h>
#include <sys/mman.h>

#include <cstring>

#include "farmem/runtime.hpp"
#include "runtime/fatal.hpp"
#include "runtime/os.hpp"

namespace farmem::tier {
namespace {

constexpr std::size_t kKey = 32, kNonce = 12;

void make_nonce(std::uint64_t page, std::uint64_t version, unsigned char* n) {
  for (int i = 0; i < 5; ++i) n[i] = static_cast<unsigned char>(page >> (8 * i));
  for (int i = 0; i < 7; ++i) n[5 + i] = static_cast<unsigned char>(version >> (8 * i));
}

void make_aad(std::uint64_t page, unsigned char* a) {
  const std::uint64_t addr = page << 12;
  for (int i = 0; i < 8; ++i) a[i] = static_cast<unsigned char>(addr >> (8 * i));
}

[[noreturn]] void crypto_fail(const char* what) {
  detail::fatal("page protection: OpenSSL failed to %s (a broken libcrypto install?)", what);
}

int as_int(std::size_t len) {
  if (len > (1u << 20)) detail::fatal("page protection: %zu bytes in one piece (a farmem bug)", len);
  return static_cast<int>(len);
}

}  // namespace

bool parse_protect(const std::string& v) {
  if (v == "none") return false;
  if (v == "aead") return true;
  throw Error("FARMEM_PROTECT='" + v + "' is not none or aead; set FARMEM_PROTECT=aead to encrypt and check far pages, or none");
}

PageSeal::PageSeal(std::uint64_t npages)
    : npages_(npages),
      table_(detail::map_table<Entry>(npages)),
      key_(static_cast<unsigned char*>(
          mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0))) {
  if (table_ == nullptr)
    throw Error("cannot map the page protection table; raise vm.max_map_count or lower FARMEM_FAR_MEM");
  if (key_ == MAP_FAILED) throw Error("cannot map a page for the page protection key");
  madvise(key_, 4096, MADV_DONTDUMP);
  if (RAND_bytes(key_, kKey) != 1) throw Error("page protection: OpenSSL could not make a random key");
}

PageSeal::~PageSeal() {
  OPENSSL_cleanse(key_, kKey);
  munmap(key_, 4096);
  munmap(table_, npages_ * sizeof(Entry));
}

void PageSeal::commit(std::uint64_t page, std::uint64_t version, const unsigned char* tag) {
  // One writer a page at a time (the runtime never has two writes of a page
  // in flight); an older write completing late must still not win.
  if (version < table_[page].committed.load(std::memory_order_relaxed)) return;
  std::memcpy(table_[page].tag, tag, kTag);
  table_[page].committed.store(version, std::memory_order_release);
}

PageSeal::Cipher::Cipher(const PageSeal& seal) : enc_(EVP_CIPHER_CTX_new()), dec_(EVP_CIPHER_CTX_new()) {
  if (!enc_ || !dec_) crypto_fail("make a cipher context");
  if (EVP_EncryptInit_ex(enc_, EVP_aes_256_gcm(), nullptr, nullptr, nullptr) != 1 ||
      EVP_CIPHER_CTX_ctrl(enc_, EVP_CTRL_GCM_SET_IVLEN, kNonce, nullptr) != 1 ||
      EVP_EncryptInit_ex(enc_, nullptr, nullptr, seal.key_, nullptr) != 1 ||
      EVP_DecryptInit_ex(dec_, EVP_aes_256_gcm(), nullptr, nullptr, nullptr) != 1 ||
      EVP_CIPHER_CTX_ctrl(dec_, EVP_CTRL_GCM_SET_IVLEN, kNonce, nullptr) != 1 ||
      EVP_DecryptInit_ex(dec_, nullptr, nullptr, seal.key_, nullptr) != 1)
    crypto_fail("set up AES-256-GCM");
}

PageSeal::Cipher::~Cipher() {
  EVP_CIPHER_CTX_free(enc_);
  EVP_CIPHER_CTX_free(dec_);
}

void PageSeal::Cipher::seal(std::uint64_t page, std::uint64_t version, const void* in, void* out, std::size_t len,
                            unsigned char* tag) {
  unsigned char nonce[kNonce], aad[8];
  make_nonce(page, version, nonce);
  make_aad(page, aad);
  int n = 0, fin = 0;
  if (EVP_EncryptInit_ex(enc_, nullptr, nullptr, nullptr, nonce) != 1 ||
      EVP_EncryptUpdate(enc_, nullptr, &n, aad, sizeof aad) != 1 ||
      EVP_EncryptUpdate(enc_, static_cast<unsigned char*>(out), &n, static_cast<const unsigned char*>(in),
                        as_int(len)) != 1 ||
      EVP_EncryptFinal_ex(enc_, static_cast<unsigned char*>(out) + n, &fin) != 1 ||
      EVP_CIPHER_CTX_ctrl(enc_, EVP_CTRL_GCM_GET_TAG, kTag, tag) != 1)
    crypto_fail("encrypt a page");
}

bool PageSeal::Cipher::open(std::uint64_t page, std::uint64_t version, const void* in, void* out, std::size_t len,
                            const unsigned char* tag) {
  unsigned char nonce[kNonce], aad[8], t[kTag];
  make_nonce(page, version, nonce);
  make_aad(page, aad);
  std::memcpy(t, tag, kTag);
  int n = 0, fin = 0;
  if (EVP_DecryptInit_ex(dec_, nullptr, nullptr, nullptr, nonce) != 1 ||
      EVP_DecryptUpdate(dec_, nullptr, &n, aad, sizeof aad) != 1 ||
      EVP_DecryptUpdate(dec_, static_cast<unsigned char*>(out), &n, static_cast<const unsigned char*>(in),
                        as_int(len)) != 1 ||
      EVP_CIPHER_CTX_ctrl(dec_, EVP_CTRL_GCM_SET_TAG, kTag, t) != 1)
    crypto_fail("decrypt a page");
  return EVP_DecryptFinal_ex(dec_, static_cast<unsigned char*>(out) + n, &fin) == 1;
}

}  // namespace farmem::tier
