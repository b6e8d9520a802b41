// HMAC-SHA256 proofs of the shared token over both sides' nonces (OpenSSL).
#include "transport/auth.hpp"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <cstring>

#include "farmem/runtime.hpp"

namespace farmem::net::auth {
namespace {
constexpr char kClientLabel[] = "farmem v2 client proof";
constexpr char kServerLabel[] = "farmem v2 server proof";
}  // namespace

void random_nonce(unsigned char* out) {
  if (RAND_bytes(out, static_cast<int>(kNonce)) != 1) throw Error("no random bytes for the token's challenge (OpenSSL RAND_bytes failed)");
}

void prove(const std::string& token, bool client, const unsigned char* server_nonce, const unsigned char* client_nonce,
           unsigned char* mac) {
  unsigned char msg[sizeof kClientLabel + 2 * kNonce];
  static_assert(sizeof kClientLabel == sizeof kServerLabel);
  std::memcpy(msg, client ? kClientLabel : kServerLabel, sizeof kClientLabel);
  std::memcpy(msg + sizeof kClientLabel, server_nonce, kNonce);
  std::memcpy(msg + sizeof kClientLabel + kNonce, client_nonce, kNonce);
  unsigned int len = 0;
  static const char kEmpty = 0;  // HMAC wants a key pointer even for no token
  if (!HMAC(EVP_sha256(), token.empty() ? &kEmpty : token.data(), static_cast<int>(token.size()), msg, sizeof msg,
            mac, &len) ||
      len != kMac)
    throw Error("the token's proof could not be computed (OpenSSL HMAC failed)");
}

bool check(const std::string& token, bool client, const unsigned char* server_nonce, const unsigned char* client_nonce,
           const unsigned char* mac) {
  unsigned char want[kMac];
  prove(token, client, server_nonce, client_nonce, want);
  return CRYPTO_memcmp(want, mac, kMac) == 0;
}

void derive_nonce(const unsigned char* secret, const void* bound, std::size_t len, unsigned char* out) {
  unsigned int n = 0;
  if (!HMAC(EVP_sha256(), secret, static_cast<int>(kNonce), static_cast<const unsigned char*>(bound), len, out, &n) ||
      n != kNonce)
    throw Error("the server's challenge could not be computed (OpenSSL HMAC failed)");
}

bool equal(const unsigned char* a, const unsigned char* b) { return CRYPTO_memcmp(a, b, kMac) == 0; }

std::string no_token_refusal(const std::string& uri) {
  return "the memory server " + uri + " requires no token, so it cannot prove it holds ours; start it with "
         "--token-file (the file FARMEM_TOKEN_FILE names) or unset FARMEM_TOKEN_FILE";
}

std::string unproven_refusal(const std::string& uri) {
  return "the memory server " + uri + " could not prove it holds our token (another token, or something in "
         "between); check FARMEM_TOKEN_FILE and the server's --token-file";
}

}  // namespace farmem::net::auth
