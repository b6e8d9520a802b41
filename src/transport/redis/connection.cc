// One hiredis connection to one Redis node (see connection.hpp).
#include "transport/redis/connection.hpp"

#include <fcntl.h>
#include <pthread.h>

#include <cerrno>
#include <ctime>

#include "farmem/runtime.hpp"

namespace farmem::net::redis {

NoSigpipe::NoSigpipe() {
  sigemptyset(&pipe_);
  sigaddset(&pipe_, SIGPIPE);
  sigset_t pending;
  sigpending(&pending);
  was_pending_ = sigismember(&pending, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &pipe_, &old_);
}

NoSigpipe::~NoSigpipe() {
  sigset_t pending;
  sigpending(&pending);
  if (!was_pending_ && sigismember(&pending, SIGPIPE)) {
    timespec now{0, 0};
    sigtimedwait(&pipe_, nullptr, &now);
  }
  pthread_sigmask(SIG_SETMASK, &old_, nullptr);
}

std::string shown(const Node& node) {
  bool v6 = node.host.find(':') != std::string::npos;
  return (v6 ? "[" + node.host + "]" : node.host) + ":" + std::to_string(node.port);
}

std::string where(const Uri& uri, const Node& node) {
  return uri.cluster ? shown(node) + " (of " + uri.shown + ")" : uri.shown;
}

Reply command(redisContext* c, const std::string& where, const std::vector<std::string>& args) {
  std::vector<const char*> argv;
  std::vector<std::size_t> lens;
  for (auto& a : args) argv.push_back(a.data()), lens.push_back(a.size());
  NoSigpipe quiet;
  Reply r(redisCommandArgv(c, static_cast<int>(argv.size()), argv.data(), lens.data()));
  if (!r.r) {
    std::string why = c->errstr;
    if (c->err == REDIS_ERR_PROTOCOL)
      throw Error("the server at " + where + " does not speak the Redis protocol (" + why +
                  "); is it a Redis server? fix FARMEM_BACKEND");
    if (c->err == REDIS_ERR_IO && (errno == EAGAIN || errno == EWOULDBLOCK || why.find("temporarily") != std::string::npos))
      throw Error("the server at " + where + " did not answer within " + std::to_string(kConnectTimeoutMs / 1000) +
                  " s; is it a Redis server? fix FARMEM_BACKEND");
    throw Error("lost Redis at " + where + " (" + why + ")");
  }
  return r;
}

redisContext* open_connection(const Uri& uri, const Node& node) {
  const std::string where = redis::where(uri, node);
  timeval tv{kConnectTimeoutMs / 1000, 0};
  redisContext* c = redisConnectWithTimeout(node.host.c_str(), node.port, tv);
  if (!c) throw Error("cannot connect to Redis at " + where + ": out of memory");
  if (c->err) {
    std::string why = c->errstr;
    redisFree(c);
    throw Error("cannot connect to Redis at " + where + ": " + why + "; start redis-server there or fix FARMEM_BACKEND");
  }
  redisSetTimeout(c, tv);
  try {
    if (!uri.password.empty()) {
      Reply r = uri.user.empty() ? command(c, where, {"AUTH", uri.password})
                                 : command(c, where, {"AUTH", uri.user, uri.password});
      if (r.r->type == REDIS_REPLY_ERROR)
        throw Error("Redis at " + where + " refused our credentials (" + text(r.r) +
                    "); fix the user and password in FARMEM_BACKEND or FARMEM_REDIS_AUTH_FILE");
    }
    Reply pong = command(c, where, {"PING"});
    if (pong.r->type == REDIS_REPLY_ERROR) {
      std::string msg = text(pong.r);
      if (starts(msg, "NOAUTH"))
        throw Error("Redis at " + where + " needs a password (" + msg +
                    "); write it in the URI (redis://:PASSWORD@HOST:PORT) or in FARMEM_REDIS_AUTH_FILE");
      throw Error("Redis at " + where + " refused PING: " + msg);
    }
    if (pong.r->type != REDIS_REPLY_STATUS || text(pong.r) != "PONG")
      throw Error("the server at " + where + " did not answer PING as Redis does; is it a Redis server?");
    if (uri.db != 0) {
      Reply r = command(c, where, {"SELECT", std::to_string(uri.db)});
      if (r.r->type == REDIS_REPLY_ERROR)
        throw Error("Redis at " + where + " refused database " + std::to_string(uri.db) + " (" + text(r.r) +
                    "); use a database it has (its 'databases' setting) or none");
    }
  } catch (...) {
    redisFree(c);
    throw;
  }
  return c;
}

std::string info_field(redisContext* c, const std::string& where, const char* section, const std::string& field) {
  Reply r = command(c, where, {"INFO", section});
  if (r.r->type != REDIS_REPLY_STRING) return "";
  const std::string info = text(r.r);
  std::size_t at = info.find(field + ":");
  if (at == std::string::npos) return "";
  at += field.size() + 1;
  return info.substr(at, info.find_first_of("\r\n", at) - at);
}

void make_nonblocking(redisContext* c) {
  fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK);
  c->flags &= ~REDIS_BLOCK;
}

}  // namespace farmem::net::redis
