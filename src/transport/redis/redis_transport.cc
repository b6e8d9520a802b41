// The redis:// transport: far pages live as values in a Redis server, one key
// per 4 KiB page under this run's own prefix (redis_logic.hpp, docs/redis.md).
// One hiredis connection per queue pair (core); posts append commands to the
// connection's buffer, submit() writes them all (a batch is one round trip) and
// poll() reads replies without blocking and completes posts in order. With
// FARMEM_REDIS_WAIT=N a batch of writes ends with WAIT N and its writes complete
// only when N replicas hold them. A control connection discards pages and, at
// exit, removes every key this run wrote; a reaper process removes them if the
// process ends without that (killed, or under farmem-run, whose programs leave
// far memory in place at exit). A broken connection is made again (the same
// Redis, or after a failover behind the same address when FARMEM_REDIS_WAIT
// kept a replica copy of every acknowledged page) and what was in flight is
// sent again; a Redis that stays away, restarted without a replica copy, full
// or silent ends the process with one line, as the other transports do.
#include <fcntl.h>
#include <pthread.h>
#include <hiredis/hiredis.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <deque>
#include <mutex>
#include <string>
#include <vector>

#include "farmem/runtime.hpp"
#include "runtime/fatal.hpp"
#include "runtime/os.hpp"
#include "runtime/runtime.hpp"
#include "transport/queue_pair.hpp"
#include "transport/redis/redis_logic.hpp"
#include "transport/redis/redis_transport.hpp"

namespace farmem::net {
namespace {

using detail::now_ns;
using redis::kPageSize;

constexpr int kConnectTimeoutMs = 5000;
constexpr std::uint64_t kSilenceLimitNs = 10ull * 1000 * 1000 * 1000;
constexpr int kWaitTimeoutMs = 1000;      // one WAIT; repeated until the silence limit
constexpr std::size_t kUnlinkBatch = 256; // keys per UNLINK

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
  NoSigpipe() {
    sigemptyset(&pipe_);
    sigaddset(&pipe_, SIGPIPE);
    sigset_t pending;
    sigpending(&pending);
    was_pending_ = sigismember(&pending, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_, &old_);
  }
  ~NoSigpipe() {
    sigset_t pending;
    sigpending(&pending);
    if (!was_pending_ && sigismember(&pending, SIGPIPE)) {
      timespec now{0, 0};
      sigtimedwait(&pipe_, nullptr, &now);
    }
    pthread_sigmask(SIG_SETMASK, &old_, nullptr);
  }
  NoSigpipe(const NoSigpipe&) = delete;
  NoSigpipe& operator=(const NoSigpipe&) = delete;

 private:
  sigset_t pipe_, old_;
  bool was_pending_;
};

std::string text(const redisReply* r) { return r && r->str ? std::string(r->str, r->len) : std::string(); }

bool starts(const std::string& s, const char* p) { return s.rfind(p, 0) == 0; }

// The state queue pairs and the transport share: where Redis is, our key
// prefix, and which pages this run has written (a bit each, for discard and
// the clean-up at exit), with counters for the statistics line.
struct Shared {
  redis::Uri uri;
  std::string prefix;
  unsigned wait_replicas = 0;
  std::uint64_t silence_ns = kSilenceLimitNs;
  bool survive = false;  // a pool member: a lost Redis fails requests instead of ending the process
  std::atomic<std::uint64_t>* written = nullptr;  // bitmap, mmap'd: only touched parts cost memory
  std::uint64_t npages = 0;
  std::atomic<std::uint64_t> keys{0}, reads{0}, writes{0}, waits{0}, reconnects{0};
  std::mutex run_mu;
  std::string run_id;  // the Redis process holding our pages (INFO server)

  // A connection again after one broke (why): retried until the silence
  // limit. Another Redis process at that address (a restart, or a replica
  // promoted by a failover) is taken only when FARMEM_REDIS_WAIT made every
  // acknowledged page reach a replica; otherwise its pages may be gone or old,
  // and the process ends with one line. Alone only: a pool member's lost
  // Redis is the pool's to handle.
  redisContext* reopen(const std::string& why);

  // Marks page written; a new key counts once.
  void mark(std::uint64_t page) {
    if (page >= npages)
      detail::fatal("redis: far page %llu is beyond the far address space (runtime bug)",
                    static_cast<unsigned long long>(page));
    std::uint64_t bit = 1ull << (page % 64);
    if (!(written[page / 64].fetch_or(bit, std::memory_order_relaxed) & bit)) keys.fetch_add(1, std::memory_order_relaxed);
  }
  // Clears page's bit; true if it was set (its key exists).
  bool unmark(std::uint64_t page) {
    if (page >= npages) return false;
    std::uint64_t bit = 1ull << (page % 64);
    if (!(written[page / 64].fetch_and(~bit, std::memory_order_relaxed) & bit)) return false;
    keys.fetch_sub(1, std::memory_order_relaxed);
    return true;
  }
  bool marked(std::uint64_t page) const {
    return written[page / 64].load(std::memory_order_relaxed) & (1ull << (page % 64));
  }

  // Before a fatal line while Redis still answers: remove our keys, so a run
  // that ends on a full Redis does not leave it full (transport below).
  void remove_all_keys() const;

  [[noreturn]] void full(const std::string& msg) const {
    remove_all_keys();
    std::string m = msg;
    while (!m.empty() && m.back() == '.') m.pop_back();
    detail::fatal("far memory is full: Redis at %s refused a page: %s; raise its maxmemory (CONFIG SET maxmemory), "
                  "free room in it, or give farmem less far memory (a smaller working set or more --local-mem)",
                  uri.shown.c_str(), m.c_str());
  }
  [[noreturn]] void gone(const std::string& why) const {
    detail::fatal("lost Redis at %s (%s); far memory is gone: restart the application when Redis is back",
                  uri.shown.c_str(), why.c_str());
  }
  [[noreturn]] void refused(const std::string& msg) const {
    if (starts(msg, "OOM")) full(msg);
    remove_all_keys();
    detail::fatal("Redis at %s refused a request: %s", uri.shown.c_str(), msg.c_str());
  }
};

// Runs one command on a blocking connection; throws Error on a lost connection.
Reply command(redisContext* c, const Shared& s, std::vector<std::string> args) {
  std::vector<const char*> argv;
  std::vector<std::size_t> lens;
  for (auto& a : args) argv.push_back(a.data()), lens.push_back(a.size());
  NoSigpipe quiet;
  Reply r(redisCommandArgv(c, static_cast<int>(argv.size()), argv.data(), lens.data()));
  if (!r.r) {
    std::string why = c->errstr;
    if (c->err == REDIS_ERR_PROTOCOL)
      throw Error("the server at " + s.uri.shown + " does not speak the Redis protocol (" + why +
                  "); is it a Redis server? fix FARMEM_BACKEND");
    if (c->err == REDIS_ERR_IO && (errno == EAGAIN || errno == EWOULDBLOCK || why.find("temporarily") != std::string::npos))
      throw Error("the server at " + s.uri.shown + " did not answer within " +
                  std::to_string(kConnectTimeoutMs / 1000) + " s; is it a Redis server? fix FARMEM_BACKEND");
    throw Error("lost Redis at " + s.uri.shown + " (" + why + ")");
  }
  return r;
}

// A connection to node, authenticated and on our database, blocking with a
// timeout. Throws Error with one line naming the problem and the fix.
redisContext* open_connection(const Shared& s, const redis::Node& node) {
  timeval tv{kConnectTimeoutMs / 1000, 0};
  redisContext* c = redisConnectWithTimeout(node.host.c_str(), node.port, tv);
  if (!c) throw Error("cannot connect to Redis at " + s.uri.shown + ": out of memory");
  if (c->err) {
    std::string why = c->errstr;
    redisFree(c);
    throw Error("cannot connect to Redis at " + s.uri.shown + ": " + why +
                "; start redis-server there or fix FARMEM_BACKEND");
  }
  redisSetTimeout(c, tv);
  try {
    if (!s.uri.password.empty()) {
      Reply r = s.uri.user.empty() ? command(c, s, {"AUTH", s.uri.password})
                                   : command(c, s, {"AUTH", s.uri.user, s.uri.password});
      if (r.r->type == REDIS_REPLY_ERROR)
        throw Error("Redis at " + s.uri.shown + " refused our credentials (" + text(r.r) +
                    "); fix the user and password in FARMEM_BACKEND or FARMEM_REDIS_AUTH_FILE");
    }
    Reply pong = command(c, s, {"PING"});
    if (pong.r->type == REDIS_REPLY_ERROR) {
      std::string msg = text(pong.r);
      if (starts(msg, "NOAUTH"))
        throw Error("Redis at " + s.uri.shown + " needs a password (" + msg +
                    "); write it in the URI (redis://:PASSWORD@HOST:PORT) or in FARMEM_REDIS_AUTH_FILE");
      throw Error("Redis at " + s.uri.shown + " refused PING: " + msg);
    }
    if (pong.r->type != REDIS_REPLY_STATUS || text(pong.r) != "PONG")
      throw Error("the server at " + s.uri.shown + " did not answer PING as Redis does; is it a Redis server?");
    if (s.uri.db != 0) {
      Reply r = command(c, s, {"SELECT", std::to_string(s.uri.db)});
      if (r.r->type == REDIS_REPLY_ERROR)
        throw Error("Redis at " + s.uri.shown + " refused database " + std::to_string(s.uri.db) + " (" + text(r.r) +
                    "); use a database it has (its 'databases' setting) or none");
    }
  } catch (...) {
    redisFree(c);
    throw;
  }
  return c;
}

// A field of INFO section on c ("" if Redis does not say). Throws Error on a lost connection.
std::string info_field(redisContext* c, const Shared& s, const char* section, const std::string& field) {
  Reply r = command(c, s, {"INFO", section});
  if (r.r->type != REDIS_REPLY_STRING) return "";
  const std::string info = text(r.r);
  std::size_t at = info.find(field + ":");
  if (at == std::string::npos) return "";
  at += field.size() + 1;
  return info.substr(at, info.find_first_of("\r\n", at) - at);
}

redisContext* Shared::reopen(const std::string& why) {
  if (survive) gone(why);  // not reached: a member's queue pair fails its posts instead
  const std::uint64_t deadline = now_ns() + silence_ns;
  std::string last = why;
  for (;;) {
    redisContext* c = nullptr;
    try {
      c = open_connection(*this, uri.nodes[0]);
      const std::string id = info_field(c, *this, "server", "run_id");
      if (info_field(c, *this, "replication", "role") == "master") {  // a replica not promoted yet refuses writes
        std::lock_guard<std::mutex> g(run_mu);
        if (id != run_id) {
          if (wait_replicas == 0) {
            redisFree(c);
            detail::fatal("Redis at %s is another Redis now (restarted, or failed over: run_id %s, was %s) and "
                          "FARMEM_REDIS_WAIT=0 kept no replica copy of our pages, so some may be gone or old; far "
                          "memory is lost: restart the application (FARMEM_REDIS_WAIT=1 with a replica survives a "
                          "failover)",
                          uri.shown.c_str(), id.c_str(), run_id.c_str());
          }
          run_id = id;
        }
        reconnects.fetch_add(1, std::memory_order_relaxed);
        return c;
      }
      last = "it answers as a replica";
    } catch (const Error& e) {
      last = e.what();
    }
    if (c) redisFree(c);
    if (now_ns() > deadline)
      gone(why + "; no Redis to take over within " + std::to_string(silence_ns / 1000000000ull) + " s: " + last);
    timespec pause{0, 100 * 1000 * 1000};
    nanosleep(&pause, nullptr);
  }
}

// UNLINK the keys of pages, kUnlinkBatch a command, all pipelined.
// False if the connection broke.
bool unlink(redisContext* ctl, Shared& s, const std::vector<std::uint64_t>& pages) {
  std::size_t sent = 0;
  for (std::size_t i = 0; i < pages.size(); i += kUnlinkBatch) {
    std::vector<std::string> keys{"UNLINK"};
    for (std::size_t j = i; j < std::min(pages.size(), i + kUnlinkBatch); ++j)
      keys.push_back(redis::page_key(s.prefix, pages[j]));
    std::vector<const char*> argv;
    std::vector<std::size_t> lens;
    for (auto& k : keys) argv.push_back(k.data()), lens.push_back(k.size());
    redisAppendCommandArgv(ctl, static_cast<int>(argv.size()), argv.data(), lens.data());
    ++sent;
  }
  NoSigpipe quiet;
  for (; sent; --sent) {
    void* raw = nullptr;
    if (redisGetReply(ctl, &raw) != REDIS_OK) return false;
    Reply r(raw);
    if (r.r->type == REDIS_REPLY_ERROR && !s.survive) s.refused(text(r.r));
  }
  return true;
}

// UNLINK every key this run wrote. False if the connection broke: the pages
// of the batch it broke in are marked again, so a new connection (or the
// reaper) still removes them.
bool unlink_all(redisContext* ctl, Shared& s) {
  std::vector<std::uint64_t> pages;
  auto unlink_or_keep = [&] {
    if (unlink(ctl, s, pages)) return true;
    for (std::uint64_t p : pages) s.mark(p);
    return false;
  };
  for (std::uint64_t w = 0; w < (s.npages + 63) / 64; ++w) {
    std::uint64_t bits = s.written[w].load(std::memory_order_relaxed);
    for (; bits; bits &= bits - 1) {
      std::uint64_t p = w * 64 + static_cast<unsigned>(__builtin_ctzll(bits));
      if (s.unmark(p)) pages.push_back(p);
    }
    if (pages.size() >= 64 * kUnlinkBatch) {
      if (!unlink_or_keep()) return false;
      pages.clear();
    }
  }
  return unlink_or_keep();
}

// hiredis 0.14 has no switch to non-blocking once connected: clear its flag
// and the socket's together, so redisBufferRead/Write return on EAGAIN.
void make_nonblocking(redisContext* c) {
  fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK);
  c->flags &= ~REDIS_BLOCK;
}

void Shared::remove_all_keys() const {
  static std::atomic<bool> once{false};
  if (once.exchange(true)) return;
  try {  // on a connection of its own: the queue pair's has commands in flight
    redisContext* c = open_connection(*this, uri.nodes[0]);
    unlink_all(c, const_cast<Shared&>(*this));
    redisFree(c);
  } catch (const Error&) {
  }
}

// A queue pair's non-blocking pipelined connection.
class RedisQueuePair final : public QueuePair {
 public:
  // c null: a pool member's queue pair whose Redis could not be reached; it fails everything.
  RedisQueuePair(Shared& s, redisContext* c) : s_(s), c_(c), dead_(c == nullptr) {
    if (!dead_) make_nonblocking(c_);
  }
  ~RedisQueuePair() override {
    if (c_) redisFree(c_);
  }

  void post_read(std::uint64_t off, void* local, std::size_t len, std::uint64_t cookie) override {
    if (dead_) return done_.push_back({cookie, true});
    auto parts = checked_split(off, len, "read");
    char* dst = static_cast<char*>(local);
    for (std::size_t i = 0; i < parts.size(); ++i) {
      const redis::Part& p = parts[i];
      send({p.whole() ? Kind::GetWhole : Kind::GetRange, i + 1 == parts.size(), cookie, dst + p.at, p.len, p.page,
            nullptr, p.in_page});
    }
    s_.reads.fetch_add(1, std::memory_order_relaxed);
  }
  void post_write(std::uint64_t off, const void* local, std::size_t len, std::uint64_t cookie) override {
    if (dead_) return done_.push_back({cookie, true});
    auto parts = checked_split(off, len, "write");
    const char* src = static_cast<const char*>(local);
    for (std::size_t i = 0; i < parts.size(); ++i) {
      const redis::Part& p = parts[i];
      send({Kind::Write, i + 1 == parts.size(), cookie, nullptr, p.len, p.page, src + p.at, p.in_page});
      s_.mark(p.page);
    }
    s_.writes.fetch_add(1, std::memory_order_relaxed);
  }
  void submit() override {
    if (dead_) return;
    try {
      if (unwaited_writes_ && s_.wait_replicas) append_wait();
      flush();
    } catch (const Lost&) {
    }
  }
  std::size_t poll(Completion* out, std::size_t max) override {
    if (done_.empty() && !expect_.empty() && !dead_) {
      try {
        if (resent_) resent_ = false, flush();  // what a reconnect sent again
        receive();
        if (done_.empty() && !expect_.empty()) check_silence();
      } catch (const Lost&) {
      }
    }
    return take_completions(done_, out, max);
  }
  void wait(unsigned timeout_us) override {
    if (expect_.empty() || dead_) return;
    pollfd p{c_->fd, POLLIN, 0};
    timespec ts{0, static_cast<long>(timeout_us) * 1000};
    ppoll(&p, 1, &ts, nullptr);
  }

 private:
  enum class Kind : std::uint8_t { GetWhole, GetRange, Write, Wait };
  // One command in flight, with what it takes to send it again after a reconnect.
  struct Expect {
    Kind kind;
    bool last;  // the post's last part: its reply completes the post
    std::uint64_t cookie;
    char* dst;
    std::uint32_t len;
    std::uint64_t page;
    const char* src = nullptr;  // a write's bytes (the frame stays ours until the post completes)
    std::uint32_t in_page = 0;  // a range's start in its page
  };

  struct Lost {};  // thrown by lost() in a pool member, caught by submit() and poll()

  // Redis is gone or unusable. Alone, that ends the process; in a pool, every
  // post in flight and every later one completes as failed.
  [[noreturn]] void lost(const std::string& why) {
    if (!s_.survive) {
      resume(why);
      throw Lost{};
    }
    dead_ = true;
    for (const Expect& e : expect_)
      if (e.last && e.kind != Kind::Wait) done_.push_back({e.cookie, true});
    for (const Expect& e : unacked_)
      if (e.last) done_.push_back({e.cookie, true});
    expect_.clear();
    unacked_.clear();
    redisFree(c_);
    c_ = nullptr;
    throw Lost{};
  }

  // Alone, a broken connection is made again (Shared::reopen: the same Redis,
  // or a failover FARMEM_REDIS_WAIT made safe) and every command without an
  // answer, and every write a WAIT has not confirmed, is sent again: SET and
  // GET of the same bytes, so one that did reach Redis does no harm.
  void resume(const std::string& why) {
    if (++resumes_ > 20) s_.gone(why + " (again and again)");
    redisContext* c = s_.reopen(why);
    redisFree(c_);
    c_ = c;
    make_nonblocking(c_);
    std::deque<Expect> again;
    for (Expect& e : unacked_) again.push_back(e);
    for (Expect& e : expect_)
      if (e.kind != Kind::Wait) again.push_back(e);
    unacked_.clear();
    expect_.clear();
    wait_since_ns_ = 0;
    for (const Expect& e : again) send(e);
    if (unwaited_writes_ && s_.wait_replicas) append_wait();
    progress_ns_ = now_ns();
    resent_ = true;
  }

  // Appends the command for e and expects its reply.
  void send(const Expect& e) {
    const std::string key = redis::page_key(s_.prefix, e.page);
    const bool whole = e.len == kPageSize;
    switch (e.kind) {
      case Kind::GetWhole:
        append({"GET", key});
        break;
      case Kind::GetRange:
        append({"GETRANGE", key, std::to_string(e.in_page), std::to_string(e.in_page + e.len - 1)});
        break;
      case Kind::Write:
        if (whole) append({"SET", key, std::string_view(e.src, e.len)});
        else append({"SETRANGE", key, std::to_string(e.in_page), std::string_view(e.src, e.len)});
        unwaited_writes_ = true;
        break;
      case Kind::Wait:
        return;
    }
    expect_.push_back(e);
  }

  std::vector<redis::Part> checked_split(std::uint64_t off, std::size_t len, const char* what) {
    auto parts = redis::split(off, len);
    if (parts.empty())
      detail::fatal("redis: a %s of %zu bytes at %llu is not in whole 512-byte units (runtime bug)", what, len,
                    static_cast<unsigned long long>(off));
    if (expect_.empty()) progress_ns_ = now_ns();
    return parts;
  }

  void append(std::initializer_list<std::string_view> args) {
    const char* argv[4];
    std::size_t lens[4];
    int n = 0;
    for (std::string_view a : args) argv[n] = a.data(), lens[n++] = a.size();
    if (redisAppendCommandArgv(c_, n, argv, lens) != REDIS_OK) detail::fatal("redis: out of memory");
  }

  void append_wait() {
    append({"WAIT", std::to_string(s_.wait_replicas), std::to_string(kWaitTimeoutMs)});
    expect_.push_back({Kind::Wait, true, 0, nullptr, 0, 0});
    unwaited_writes_ = false;
    s_.waits.fetch_add(1, std::memory_order_relaxed);
  }

  // Writes the whole output buffer; while the socket is full, reads replies so
  // Redis never blocks on us.
  void flush() {
    int done = 0;
    while (!done) {
      int rc;
      {
        NoSigpipe quiet;
        rc = redisBufferWrite(c_, &done);
      }
      if (rc != REDIS_OK) lost(c_->errstr);
      if (done) break;
      receive();
      pollfd p{c_->fd, POLLOUT | POLLIN, 0};
      ::poll(&p, 1, 100);
      check_silence();
    }
  }

  void receive() {
    for (;;) {
      void* raw = nullptr;
      if (redisGetReplyFromReader(c_, &raw) != REDIS_OK) lost(std::string("malformed reply: ") + c_->errstr);
      if (!raw) {
        std::size_t before = c_->reader->len;
        if (redisBufferRead(c_) != REDIS_OK) lost(c_->err == REDIS_ERR_EOF ? "it closed the connection" : c_->errstr);
        if (c_->reader->len == before) return;  // nothing more has arrived
        continue;
      }
      Reply r(raw);
      progress_ns_ = now_ns();
      resumes_ = 0;
      if (expect_.empty()) lost("a reply to a request we did not send");
      Expect e = expect_.front();
      expect_.pop_front();
      on_reply(e, r.r);
    }
  }

  void on_reply(const Expect& e, const redisReply* r) {
    if (r->type == REDIS_REPLY_ERROR) {
      if (!s_.survive || starts(text(r), "OOM")) s_.refused(text(r));  // a full member: far memory is full
      lost("it refused a request: " + text(r));
    }
    switch (e.kind) {
      case Kind::GetWhole:
      case Kind::GetRange: {
        if (r->type == REDIS_REPLY_NIL && s_.survive) {  // the pool reads the page elsewhere
          part_failed_ = true;
          if (e.last) done_.push_back({e.cookie, true}), part_failed_ = false;
          break;
        }
        if (r->type == REDIS_REPLY_NIL) {
          // We read only pages we wrote: a missing key is a lost page.
          s_.remove_all_keys();
          detail::fatal("Redis at %s lost far page %llu (its key is gone: evicted by a maxmemory-policy other than "
                        "noeviction, flushed or deleted); far memory is gone: set maxmemory-policy noeviction and "
                        "restart the application",
                        s_.uri.shown.c_str(), static_cast<unsigned long long>(e.page));
        }
        if (r->type != REDIS_REPLY_STRING) lost("a GET answered with something other than a string");
        // Shorter than asked: the page was written in part (SETRANGE), the rest is zeros.
        std::size_t n = std::min<std::size_t>(e.len, r->len);
        std::memcpy(e.dst, r->str, n);
        std::memset(e.dst + n, 0, e.len - n);
        if (e.last) done_.push_back({e.cookie, part_failed_}), part_failed_ = false;
        break;
      }
      case Kind::Write:
        if (s_.wait_replicas) unacked_.push_back(e);
        else if (e.last) done_.push_back({e.cookie});
        break;
      case Kind::Wait: {
        if (r->type != REDIS_REPLY_INTEGER) lost("WAIT answered with something other than a number");
        if (r->integer >= static_cast<long long>(s_.wait_replicas)) {
          for (const Expect& w : unacked_)
            if (w.last) done_.push_back({w.cookie});
          unacked_.clear();
          resumes_ = 0;
          wait_since_ns_ = 0;
          break;
        }
        // Fewer replicas than asked hold the batch: ask again, until the silence limit.
        if (!wait_since_ns_) wait_since_ns_ = now_ns();
        if (now_ns() - wait_since_ns_ > s_.silence_ns && s_.survive) lost("its replicas did not acknowledge");
        if (now_ns() - wait_since_ns_ > s_.silence_ns)
          detail::fatal("Redis at %s: only %lld of the %u replicas FARMEM_REDIS_WAIT asks for acknowledged written "
                        "pages within %llu s; bring its replicas back or lower FARMEM_REDIS_WAIT",
                        s_.uri.shown.c_str(), r->integer, s_.wait_replicas,
                        static_cast<unsigned long long>(s_.silence_ns / 1000000000ull));
        append_wait();
        flush();
        break;
      }
    }
  }

  void check_silence() {
    if (now_ns() - progress_ns_ <= s_.silence_ns) return;
    if (s_.survive) lost("no answer for " + std::to_string(s_.silence_ns / 1000000) + " ms");
    detail::fatal("Redis at %s has not answered for %llu s; giving up", s_.uri.shown.c_str(),
                  static_cast<unsigned long long>(s_.silence_ns / 1000000000ull));
  }

  Shared& s_;
  redisContext* c_;
  std::deque<Expect> expect_;        // one per command in flight, in the order of their replies
  std::deque<Completion> done_;
  std::deque<Expect> unacked_;       // writes Redis holds, waiting for WAIT's replicas
  bool unwaited_writes_ = false;
  bool resent_ = false;              // a reconnect appended commands: poll() sends them
  unsigned resumes_ = 0;             // reconnects since the last confirmed batch
  bool dead_;
  bool part_failed_ = false;  // a part of the post being completed found its key missing
  std::uint64_t progress_ns_ = 0, wait_since_ns_ = 0;
};

// The reaper: a process that outlives ours and removes the keys still marked in
// the shared bitmap when every copy of the pipe's write end is closed (our exit,
// however it happens, or an exec). It is started with raw clone() so that no
// fork handler of the runtime runs, and it never allocates: the parent may have
// held the allocator's lock in another thread. Everything it needs is prepared
// before the clone.
class Reaper {
 public:
  Reaper() = default;
  Reaper(const Reaper&) = delete;
  Reaper& operator=(const Reaper&) = delete;
  // A transport closed before exit (a probe, a test) ends its reaper now: the
  // clean-up at shutdown has cleared the bit map, so it has nothing to do.
  ~Reaper() {
    if (keep_open_ >= 0) close(keep_open_);
  }
  // Prepares and starts it; on any failure there is simply no reaper.
  void start(const Shared& s) {
    const redis::Node& node = s.uri.nodes[0];
    addrinfo hints{}, *res = nullptr;
    hints.ai_socktype = SOCK_STREAM;
    if (getaddrinfo(node.host.c_str(), std::to_string(node.port).c_str(), &hints, &res) != 0 || !res) return;
    std::memcpy(&addr_, res->ai_addr, res->ai_addrlen);
    addr_len_ = res->ai_addrlen;
    family_ = res->ai_family;
    freeaddrinfo(res);
    if (!s.uri.password.empty()) {
      std::vector<std::string> auth{"AUTH"};
      if (!s.uri.user.empty()) auth.push_back(s.uri.user);
      auth.push_back(s.uri.password);
      preamble_ += resp(auth), ++preamble_cmds_;
    }
    if (s.uri.db) preamble_ += resp({"SELECT", std::to_string(s.uri.db)}), ++preamble_cmds_;
    prefix_ = s.prefix;
    written_ = s.written;
    words_ = (s.npages + 63) / 64;
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) return;
    long mid = syscall(SYS_clone, SIGCHLD, nullptr, nullptr, nullptr, nullptr);
    if (mid == 0) {
      if (syscall(SYS_clone, SIGCHLD, nullptr, nullptr, nullptr, nullptr) == 0) run(fds[0]);
      _exit(0);  // the middle process: the reaper is not our child, a wait() for all children ignores it
    }
    close(fds[0]);
    if (mid > 0) {
      while (waitpid(static_cast<pid_t>(mid), nullptr, 0) < 0 && errno == EINTR) {
      }
      keep_open_ = fds[1];  // closed by our exit (or exec): the reaper's signal
    } else {
      close(fds[1]);
    }
  }

 private:
  static std::string resp(const std::vector<std::string>& args) {
    std::string out;
    out.append("*").append(std::to_string(args.size())).append("\r\n");
    for (const auto& a : args) out.append("$").append(std::to_string(a.size())).append("\r\n").append(a).append("\r\n");
    return out;
  }

  [[noreturn]] void run(int pipe_read) {
    setsid();  // the terminal's Ctrl-C and hang-up are for the program, not for us
    for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGPIPE, SIGTSTP, SIGTTIN, SIGTTOU}) signal(sig, SIG_IGN);
    prctl(PR_SET_NAME, "farmem-reaper");
    prctl(PR_SET_PDEATHSIG, 0);
    int null = open("/dev/null", O_RDWR);
    for (int fd = 0; fd < 3; ++fd) dup2(null, fd);
    // Hold none of the program's descriptors (its sockets, the pipe its reader waits on).
    if (pipe_read > 3) close_range(3, pipe_read - 1, 0);
    close_range(pipe_read + 1, ~0u, 0);
    char byte;
    while (read(pipe_read, &byte, 1) != 0 && errno == EINTR) {
    }
    bool any = false;
    for (std::uint64_t w = 0; w < words_ && !any; ++w) any = written_[w].load(std::memory_order_relaxed) != 0;
    if (!any) _exit(0);
    int fd = socket(family_, SOCK_STREAM | SOCK_CLOEXEC, 0);
    timeval tv{10, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (fd < 0 || connect(fd, reinterpret_cast<sockaddr*>(&addr_), addr_len_) != 0) _exit(1);
    std::uint64_t commands = preamble_cmds_;
    if (!send_all(fd, preamble_.data(), preamble_.size())) _exit(1);
    // UNLINK in batches: *N $6 UNLINK then $len key for each page.
    static char buf[1 << 16];
    std::uint64_t page_of[kUnlinkBatch];
    std::size_t n = 0;
    auto flush = [&] {
      if (!n) return;
      std::size_t len = 0;
      len += put(buf + len, "*"), len += put_u64(buf + len, n + 1), len += put(buf + len, "\r\n$6\r\nUNLINK\r\n");
      for (std::size_t i = 0; i < n; ++i) {
        char key[256];
        std::size_t k = put(key, prefix_.c_str());
        k += put_u64(key + k, page_of[i] / redis::kPagesPerStripe);
        k += put(key + k, "}:");
        k += put_u64(key + k, page_of[i]);
        len += put(buf + len, "$"), len += put_u64(buf + len, k), len += put(buf + len, "\r\n");
        std::memcpy(buf + len, key, k), len += k;
        len += put(buf + len, "\r\n");
      }
      if (!send_all(fd, buf, len)) _exit(1);
      ++commands;
      n = 0;
    };
    for (std::uint64_t w = 0; w < words_; ++w)
      for (std::uint64_t bits = written_[w].load(std::memory_order_relaxed); bits; bits &= bits - 1) {
        page_of[n++] = w * 64 + static_cast<unsigned>(__builtin_ctzll(bits));
        if (n == kUnlinkBatch) flush();
      }
    flush();
    // Every reply is one line (+OK, :N or -ERR): wait for them all before closing.
    for (std::uint64_t lines = 0; lines < commands;) {
      ssize_t got = read(fd, buf, sizeof buf);
      if (got <= 0) _exit(1);
      for (ssize_t i = 0; i < got; ++i) lines += buf[i] == '\n';
    }
    _exit(0);
  }

  static std::size_t put(char* dst, const char* text) {
    std::size_t n = std::strlen(text);
    std::memcpy(dst, text, n);
    return n;
  }
  static std::size_t put_u64(char* dst, std::uint64_t v) {
    char digits[24];
    std::size_t n = 0;
    do digits[n++] = static_cast<char>('0' + v % 10), v /= 10;
    while (v);
    for (std::size_t i = 0; i < n; ++i) dst[i] = digits[n - 1 - i];
    return n;
  }
  static bool send_all(int fd, const char* p, std::size_t len) {
    while (len) {
      ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
      if (n <= 0 && errno != EINTR) return false;
      if (n > 0) p += n, len -= static_cast<std::size_t>(n);
    }
    return true;
  }

  sockaddr_storage addr_{};
  socklen_t addr_len_ = 0;
  int family_ = AF_INET;
  std::string preamble_, prefix_;
  std::uint64_t preamble_cmds_ = 0;
  const std::atomic<std::uint64_t>* written_ = nullptr;
  std::uint64_t words_ = 0;
  int keep_open_ = -1;
};

class RedisTransport final : public Transport {
 public:
  RedisTransport(const Config& cfg, const MemberOptions* member) {
    // Ordinary memory under the preload shim: the reaper reads these strings in a
    // copy of this process where the transparent region is not served.
    detail::InternalAlloc internal;
    s_.uri = redis::parse_uri(member ? member->uri : cfg.backend);
    s_.survive = member != nullptr;
    if (!cfg.redis_auth_file.empty()) redis::read_auth_file(cfg.redis_auth_file, s_.uri.user, s_.uri.password);
    if (cfg.server_timeout_ms) s_.silence_ns = cfg.server_timeout_ms * 1000000ull;
    if (member && member->timeout_ns) s_.silence_ns = member->timeout_ns;
    char host[256] = "host";
    gethostname(host, sizeof host - 1);
    for (char* p = host; *p; ++p)
      if (*p == '{' || *p == '}' || *p == '*' || *p == ' ') *p = '_';  // keep the hash tag and patterns whole
    // Microseconds: an exec keeps the pid, and the image before it may still have a reaper at work.
    // Unique within the process too: a pool's members start in the same microsecond.
    static std::atomic<std::uint64_t> last_start{0};
    timespec now{};
    clock_gettime(CLOCK_REALTIME, &now);
    std::uint64_t start = static_cast<std::uint64_t>(now.tv_sec) * 1000000 + now.tv_nsec / 1000;
    for (std::uint64_t prev = last_start.load(); !last_start.compare_exchange_weak(prev, std::max(start, prev + 1));) {
    }
    start = last_start.load();
    s_.prefix = redis::key_prefix(host, getpid(), start);
    // Offsets may reach past far_mem_bytes by a codec's packing: room for twice it.
    std::uint64_t far = cfg.far_mem_bytes ? cfg.far_mem_bytes : 64ull << 30;
    s_.npages = (2 * far + kPageSize - 1) / kPageSize;
    bitmap_bytes_ = (s_.npages + 63) / 64 * 8;
    void* m = mmap(nullptr, bitmap_bytes_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) throw Error(std::string("redis: cannot map the written-page bitmap: ") + detail::errno_text(errno));
    s_.written = static_cast<std::atomic<std::uint64_t>*>(m);  // shared with the reaper

    ctl_ = open_connection(s_, s_.uri.nodes[0]);
    try {
      s_.run_id = info_field(ctl_, s_, "server", "run_id");
    } catch (const Error&) {
      redisFree(ctl_);
      throw;
    }
    const long long replicas = connected_replicas();
    if (cfg.redis_wait < 0) {
      s_.wait_replicas = replicas > 0 ? 1 : 0;
    } else {
      s_.wait_replicas = static_cast<unsigned>(cfg.redis_wait);
      if (replicas >= 0 && s_.wait_replicas > replicas) {
        redisFree(ctl_);
        throw Error("FARMEM_REDIS_WAIT=" + std::to_string(cfg.redis_wait) + " but Redis at " + s_.uri.shown +
                    " has " + std::to_string(replicas) + " connected replicas; add replicas or lower FARMEM_REDIS_WAIT");
      }
    }
    reaper_.start(s_);
  }
  ~RedisTransport() override {
    shutdown();
    munmap(s_.written, bitmap_bytes_);
  }

  std::unique_ptr<QueuePair> create_qp() override {
    // Runs on any thread that starts using far memory: never throw from here.
    try {
      return std::make_unique<RedisQueuePair>(s_, open_connection(s_, s_.uri.nodes[0]));
    } catch (const Error& e) {
      if (s_.survive) return std::make_unique<RedisQueuePair>(s_, nullptr);  // the pool goes elsewhere
      detail::fatal("lost Redis at %s (a new core could not connect: %s)", s_.uri.shown.c_str(), e.what());
    }
  }
  void discard(std::uint64_t off, std::uint64_t len) override {
    std::lock_guard<std::mutex> g(mu_);
    if (!ctl_ || child_) return;
    std::vector<std::uint64_t> pages;
    // Only whole pages are dropped: a part of one may still hold another piece.
    for (std::uint64_t p = (off + kPageSize - 1) / kPageSize; (p + 1) * kPageSize <= off + len; ++p)
      if (s_.unmark(p)) pages.push_back(p);
    if (!unlink(ctl_, s_, pages)) {
      redisFree(ctl_);
      ctl_ = nullptr;
      if (s_.survive) return;  // a member's lost Redis: its keys went with it
      ctl_ = s_.reopen("the control connection broke");
      if (!unlink(ctl_, s_, pages)) s_.gone(std::string("control connection: ") + ctl_->errstr);
    }
  }
  std::uint64_t remote_usage() override { return s_.keys.load(std::memory_order_relaxed) * kPageSize; }
  void shutdown() override {
    std::lock_guard<std::mutex> g(mu_);
    if (!ctl_) return;
    // A forked child leaves its parent's pages alone. Alone, a broken control
    // connection is made again, as the queue pairs' are.
    if (!child_ && !unlink_all(ctl_, s_) && !s_.survive) {
      redisFree(ctl_);
      ctl_ = s_.reopen("the control connection broke");
      if (!unlink_all(ctl_, s_)) s_.gone(std::string("control connection: ") + ctl_->errstr);
    }
    redisFree(ctl_);
    ctl_ = nullptr;
  }
  std::string describe() const override { return s_.uri.shown; }
  std::string stats_json() const override {
    return "\"redis\":{\"reads\":" + std::to_string(s_.reads.load()) + ",\"writes\":" +
           std::to_string(s_.writes.load()) + ",\"keys\":" + std::to_string(s_.keys.load()) +
           ",\"waits\":" + std::to_string(s_.waits.load()) + ",\"wait_replicas\":" +
           std::to_string(s_.wait_replicas) + ",\"reconnects\":" + std::to_string(s_.reconnects.load()) + "}";
  }
  // A child cannot read our pages (fork_prepare says so); it must not remove them at its exit.
  void fork_child() override { child_ = true; }

 private:
  // INFO replication's connected_slaves, or -1 if Redis does not say.
  long long connected_replicas() {
    try {
      const std::string n = info_field(ctl_, s_, "replication", "connected_slaves");
      return n.empty() ? -1 : std::strtoll(n.c_str(), nullptr, 10);
    } catch (const Error&) {
      redisFree(ctl_);
      throw;
    }
  }

  Shared s_;
  Reaper reaper_;
  std::size_t bitmap_bytes_ = 0;
  redisContext* ctl_ = nullptr;  // blocking, for discard, INFO and the clean-up at exit
  std::mutex mu_;
  bool child_ = false;
};

}  // namespace

namespace {
void refuse_cluster(const std::string& uri) {
  redis::Uri u = redis::parse_uri(uri);
  if (u.cluster)
    throw Error("FARMEM_BACKEND=" + u.shown + ": Redis Cluster is not supported yet; point redis:// at one "
                "standalone Redis (or one master with its replicas)");
}
}  // namespace

std::unique_ptr<Transport> connect_redis(const Config& cfg) {
  refuse_cluster(cfg.backend);
  return std::make_unique<RedisTransport>(cfg, nullptr);
}

std::unique_ptr<Transport> connect_redis_member(const Config& cfg, const MemberOptions& member) {
  refuse_cluster(member.uri);
  return std::make_unique<RedisTransport>(cfg, &member);
}

}  // namespace farmem::net
