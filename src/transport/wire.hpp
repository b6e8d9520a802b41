// The farmem wire protocol (version 2) between the runtime and a networked
// farmem-server: fixed 40-byte little-endian headers, optionally followed by a
// payload. Documented in docs/protocol.md. Requests carry an id that the reply
// echoes; a connection may have many requests in flight (pipelining).
#pragma once
#include <cstdint>
#include <cstring>
#include <string>

namespace farmem::net::wire {

inline constexpr std::uint32_t kMagic = 0x50574d46;  // "FMWP"
inline constexpr std::uint16_t kVersion = 2;  // 2: the token is proven (transport/auth.hpp), never sent
inline constexpr std::uint32_t kMaxPayload = 1u << 20;  // 1 MiB: 256 pages
inline constexpr std::uint32_t kMaxToken = 4096;
// Reads, writes and discards are whole multiples of this, at offsets aligned to
// it: a page, or a piece of one (a pool cuts a page in up to 8 for erasure coding).
inline constexpr std::uint32_t kUnit = 512;

enum class Op : std::uint16_t {
  Hello = 1,    // offset: requested capacity; size: 0 new session / 1 attach; id: session to attach; no payload
                //   -> Challenge; then Prove -> Reply (id = session, offset = capacity, payload: server's proof)
  Read = 2,     // offset, size: bytes to read (page multiple)
  Write = 3,    // offset, size == length: payload written there
  Discard = 4,  // offset, size: drop these pages
  Usage = 5,    // -> Reply with offset = bytes held for this session
  Prove = 6,    // payload: client nonce, then HMAC-SHA256(token, client label | server nonce | client nonce)
  Reply = 16,   // status 0: ok (Read: payload = data; Hello: id = session, offset = capacity)
  Error = 17,   // status: Errc; payload: message
  Challenge = 18,  // the answer to Hello; payload: the server's nonce
};

enum class Errc : std::uint32_t {
  Ok = 0,
  BadMessage = 1,
  BadToken = 2,
  NoCapacity = 3,
  OutOfRange = 4,
  NoSession = 5,
  Version = 6,
};

struct Header {
  std::uint32_t magic;
  std::uint16_t version;
  std::uint16_t op;
  std::uint64_t id;
  std::uint64_t offset;
  std::uint32_t size;
  std::uint32_t length;  // payload bytes that follow
  std::uint32_t status;
  std::uint32_t reserved;
};
static_assert(sizeof(Header) == 40);

inline Header make(Op op, std::uint64_t id, std::uint64_t offset, std::uint32_t size,
                   std::uint32_t length, std::uint32_t status = 0) {
  return Header{kMagic, kVersion, static_cast<std::uint16_t>(op), id, offset, size, length, status, 0};
}

// Reads a shared-token file (client FARMEM_TOKEN_FILE, server --token-file):
// its contents without trailing newlines and spaces. False (errno set) if unreadable.
bool read_token_file(const std::string& path, std::string* token);
// A client's token: FARMEM_TOKEN_FILE's (path), or "" without one. Throws
// farmem::Error when it cannot be read or holds more than max bytes.
std::string read_client_token(const std::string& path, std::size_t max);

// Checks a received header before anything trusts it. Returns Ok or why not.
// `from_server` selects which ops are legal in that direction.
Errc validate(const Header& h, bool from_server, std::string* why);
// The one line for a peer (peer_is: "client" or "server") that speaks another
// protocol version than kVersion, naming both.
std::string version_refusal(std::uint16_t peer, const char* peer_is);

}  // namespace farmem::net::wire
