// The redis:// transport's pure logic, apart from any socket so it is unit-tested:
// URIs and auth files, the names of our keys, the Redis Cluster slot of a key,
// and how a transfer at any 512-byte-aligned offset splits into per-page parts.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace farmem::net::redis {

constexpr std::uint64_t kPageSize = 4096;
constexpr std::uint64_t kUnit = 512;          // the smallest transfer, and its alignment
constexpr std::uint64_t kPagesPerStripe = 16; // pages that share one hash tag (one cluster slot)
constexpr unsigned kSlots = 16384;              // Redis Cluster's hash slots

struct Node {
  std::string host;
  int port = 6379;
};

struct Uri {
  bool cluster = false;  // redis+cluster://
  std::vector<Node> nodes;
  std::string user, password;  // both empty: no AUTH; user empty: AUTH password
  int db = 0;
  std::string shown;  // the URI with its password masked, for messages
};

// redis://[user:password@]HOST[:PORT][/DB] or redis+cluster://[auth@]H1:P1,H2:P2,...
// Throws farmem::Error naming what is wrong.
Uri parse_uri(const std::string& uri);

// An auth file holds "password" or "user password" on its first line; fills
// user and password (user empty for a password alone). Throws farmem::Error.
void read_auth_file(const std::string& path, std::string& user, std::string& password);

// "farmem:{HOST-PID-START-": every key of this run starts with it; a page's key
// adds its stripe, closes the hash tag and names the page.
std::string key_prefix(const std::string& host, long pid, std::uint64_t start_time);
// "farmem:{HOST-PID-START-STRIPE}:PAGE", STRIPE = PAGE / kPagesPerStripe.
std::string page_key(const std::string& prefix, std::uint64_t page);

// CRC16-CCITT (XMODEM: polynomial 0x1021, initial value 0), as the Redis Cluster
// spec defines it (crc: the value so far, to go on over more bytes), and the
// slot of a key (its hash tag's, if it has one).
std::uint16_t crc16(std::string_view bytes, std::uint16_t crc = 0);
unsigned key_slot(std::string_view key);
// The slot of every page key of stripe under prefix (key_prefix's), computed
// without building a key or allocating (the reaper calls it).
unsigned stripe_slot(std::string_view prefix, std::uint64_t stripe);

// A cluster node's redirection of a command: "MOVED SLOT HOST:PORT" (the slot
// lives there now) or "ASK SLOT HOST:PORT" (this once, while the slot moves).
struct Redirect {
  bool ask = false;
  unsigned slot = 0;
  Node node;
};
// True and fills out if error is a well-formed MOVED or ASK. An empty HOST
// ("MOVED 1 :7001", a node that does not know its address) keeps `host`.
bool parse_redirect(std::string_view error, const std::string& host, Redirect& out);
// True for the refusals a cluster gives while a slot moves, a failover runs or
// a node loads (TRYAGAIN, CLUSTERDOWN, LOADING): the same command later works.
bool retry_later(std::string_view error);

// A master in a CLUSTER SLOTS reply, as parse_cluster_slots gives it.
struct SlotOwner {
  char host[64];  // "" when the node does not know its own address
  int port;
};
// Parses a whole CLUSTER SLOTS reply (RESP) in buf without allocating (the
// reaper calls it): owner[slot] becomes an index into nodes, which gets each
// distinct master once (at most max of them; *count says how many). Returns
// the bytes the reply took, 0 if buf holds only part of it so far, or -1 if
// it is not a slot map (an error reply, a malformed one, too many masters).
long parse_cluster_slots(const char* buf, std::size_t len, SlotOwner* nodes, unsigned max, unsigned* count,
                         std::uint16_t* owner);

// One page's share of a transfer: bytes [in_page, in_page+len) of page `page`,
// at `at` bytes into the caller's buffer.
struct Part {
  std::uint64_t page;
  std::uint32_t in_page, len;
  std::size_t at;
  bool whole() const { return in_page == 0 && len == kPageSize; }
};
// Splits [off, off+len) at page boundaries; off and len must be multiples of
// kUnit and len > 0 (else returns no parts).
std::vector<Part> split(std::uint64_t off, std::uint64_t len);

}  // namespace farmem::net::redis
