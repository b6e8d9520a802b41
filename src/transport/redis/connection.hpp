// One hiredis connection to one Redis node: opened, authenticated and on our
// database with every failure named in one line; blocking commands for the
// control path; and what it takes to use hiredis 0.14 safely (replies that
// free themselves, no SIGPIPE, non-blocking after the connect).
#pragma once
#include <hiredis/hiredis.h>
#include <signal.h>

#include <string>
#include <vector>

#include "transport/redis/redis_logic.hpp"

namespace farmem::net::redis {

constexpr int kConnectTimeoutMs = 5000;

struct Reply {  // owns a redisReply
  redisReply* r = nullptr;
  explicit Reply(void* p) : r(static_cast<redisReply*>(p)) {}
  ~Reply() {
    if (r) freeReplyObject(r);
  }
  Reply(Reply&& o) noexcept : r(o.r) { o.r = nullptr; }
  Reply(const Reply&) = delete;
  Reply& operator=(const Reply&) = delete;
};

// hiredis 0.14 writes with write(): a write to a connection Redis closed raises
// SIGPIPE, which would end the program without a word. Blocked on this thread
// while hiredis writes; one that became pending is taken back, and the write
// fails with EPIPE instead.
class NoSigpipe {
 public:
  NoSigpipe();
  ~NoSigpipe();
  NoSigpipe(const NoSigpipe&) = delete;
  NoSigpipe& operator=(const NoSigpipe&) = delete;

 private:
  sigset_t pipe_, old_;
  bool was_pending_;
};

inline std::string text(const redisReply* r) { return r && r->str ? std::string(r->str, r->len) : std::string(); }
inline bool starts(const std::string& s, const char* p) { return s.rfind(p, 0) == 0; }

// "HOST:PORT" of node, for messages.
std::string shown(const Node& node);
// What messages call node: the URI for a standalone Redis; in a cluster, the
// node and the URI it was learned through.
std::string where(const Uri& uri, const Node& node);

// Runs one command on a blocking connection to the node named `where`; throws
// Error on a lost connection or a peer that does not speak Redis.
Reply command(redisContext* c, const std::string& where, const std::vector<std::string>& args);

// A blocking connection (with a timeout) to node, authenticated as uri says and
// on its database. Throws Error with one line naming the problem and the fix.
redisContext* open_connection(const Uri& uri, const Node& node);

// A field of INFO section ("" if Redis does not say). Throws Error on a lost connection.
std::string info_field(redisContext* c, const std::string& where, const char* section, const std::string& field);

// hiredis 0.14 has no switch to non-blocking once connected: clear its flag
// and the socket's together, so redisBufferRead/Write return on EAGAIN.
void make_nonblocking(redisContext* c);

}  // namespace farmem::net::redis
