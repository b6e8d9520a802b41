// The token's challenge and response (wire protocol version 2): each side
// proves it holds the shared token without sending it. The server sends a
// random nonce, the client answers with its own nonce and
// HMAC-SHA256(token, client label | server nonce | client nonce), and the
// server proves itself back with the same over its own label. A recorded
// exchange is worth nothing to replay: the other side's nonce is new each time.
#pragma once
#include <cstddef>
#include <string>

namespace farmem::net::auth {

inline constexpr std::size_t kNonce = 32, kMac = 32;

// A fresh random nonce (OpenSSL RAND_bytes); throws farmem::Error if there is none.
void random_nonce(unsigned char* out);
// The client's proof (client = true) or the server's over the two nonces.
void prove(const std::string& token, bool client, const unsigned char* server_nonce,
           const unsigned char* client_nonce, unsigned char* mac);
// True if mac is that proof; compares without an early exit.
bool check(const std::string& token, bool client, const unsigned char* server_nonce,
           const unsigned char* client_nonce, const unsigned char* mac);
// A server nonce derived from a secret of the server's (kNonce bytes) and what
// the challenge is bound to (HMAC-SHA256): a server that keeps no state per
// client (dpdk://, whose hellos may be retransmitted) answers the same hello
// alike, and checks a proof's challenge by deriving it again.
void derive_nonce(const unsigned char* secret, const void* bound, std::size_t len, unsigned char* out);
// Compares two nonces or proofs without an early exit.
bool equal(const unsigned char* a, const unsigned char* b);

// The lines a client with a token stops with, naming the server (uri) and the
// fix: the server requires no token, so it cannot prove it holds ours; or its
// proof is wrong.
std::string no_token_refusal(const std::string& uri);
std::string unproven_refusal(const std::string& uri);

}  // namespace farmem::net::auth
