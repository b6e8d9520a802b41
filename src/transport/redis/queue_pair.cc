// A core's redis queue pair. Each page's command goes to the node that owns
// its key's slot, on this queue pair's own non-blocking connection to that
// node (opened when first needed). Posts append commands; submit() writes
// every connection's buffer (a batch is one round trip per node) and poll()
// reads replies without blocking. A post split over several pages completes
// when its last part does, whichever node answers last. Writes under
// FARMEM_REDIS_WAIT complete only when WAIT on their node says enough replicas
// hold them.
//
// What a cluster says is followed: MOVED updates the slot map and sends the
// command again to the new owner, ASK sends it once to the importing node
// (after ASKING), TRYAGAIN and CLUSTERDOWN send it again a little later. A
// broken connection is recovered (Shared::recover) and every command without
// an answer, and every write a WAIT has not confirmed, is sent again wherever
// its slot lives now: SET and GET of the same bytes, so one that had reached
// Redis does no harm.
#include "transport/redis/queue_pair.hpp"

#include <poll.h>

#include <cstring>
#include <deque>
#include <string>
#include <unordered_map>
#include <vector>

#include "farmem/runtime.hpp"
#include "runtime/fatal.hpp"
#include "runtime/os.hpp"
#include "transport/redis/connection.hpp"

namespace farmem::net::redis {
namespace {

using detail::now_ns;

constexpr int kWaitTimeoutMs = 1000;               // one WAIT; repeated until the silence limit
constexpr std::uint64_t kRetryPauseNs = 20000000;  // before sending again after TRYAGAIN or CLUSTERDOWN

class RedisQueuePair final : public QueuePair {
 public:
  explicit RedisQueuePair(Shared& s) : s_(s), links_(kMaxNodes) {}
  ~RedisQueuePair() override {
    for (auto& l : links_)
      if (l && l->c) redisFree(l->c);
  }

  void post_read(std::uint64_t off, void* local, std::size_t len, std::uint64_t cookie) override {
    if (dead_) return done_.push_back({cookie, true});
    auto parts = checked_split(off, len, "read");
    const std::uint64_t post = start_post(cookie, parts.size());
    char* dst = static_cast<char*>(local);
    try {
      for (const Part& p : parts)
        send({p.whole() ? Kind::GetWhole : Kind::GetRange, post, dst + p.at, p.len, p.page, nullptr, p.in_page});
    } catch (const Lost&) {
    }
    s_.reads.fetch_add(1, std::memory_order_relaxed);
  }
  void post_write(std::uint64_t off, const void* local, std::size_t len, std::uint64_t cookie) override {
    if (dead_) return done_.push_back({cookie, true});
    auto parts = checked_split(off, len, "write");
    const std::uint64_t post = start_post(cookie, parts.size());
    const char* src = static_cast<const char*>(local);
    try {
      for (const Part& p : parts) {
        s_.mark(p.page);
        send({Kind::Write, post, nullptr, p.len, p.page, src + p.at, p.in_page});
      }
    } catch (const Lost&) {
    }
    s_.writes.fetch_add(1, std::memory_order_relaxed);
  }
  void submit() override {
    if (dead_) return;
    try {
      for (std::size_t i = 0; i < links_.size(); ++i) {
        Link* l = links_[i].get();
        if (!l || !l->c) continue;
        if (l->unwaited && l->wait) append_wait(*l);
        flush(*l);
      }
    } catch (const Lost&) {
    }
  }
  std::size_t poll(Completion* out, std::size_t max) override {
    if (done_.empty() && !posts_.empty() && !dead_) {
      try {
        send_due();
        bool waiting = false;
        for (std::size_t i = 0; i < links_.size(); ++i) {
          Link* l = links_[i].get();
          if (!l || !l->c) continue;
          if (l->resent) {  // what a reconnect or a redirection sent again
            l->resent = false;
            if (l->unwaited && l->wait) append_wait(*l);
            flush(*l);
          }
          if (!l->expect.empty()) receive(*l), waiting = true;
        }
        if (done_.empty() && (waiting || !later_.empty())) check_silence();
      } catch (const Lost&) {
      }
    }
    return take_completions(done_, out, max);
  }
  void wait(unsigned timeout_us) override {
    if (posts_.empty() || dead_) return;
    pollfd p[kMaxNodes];
    nfds_t n = 0;
    for (auto& l : links_)
      if (l && l->c && !l->expect.empty()) p[n++] = {l->c->fd, POLLIN, 0};
    if (!n && later_.empty()) return;
    timespec ts{0, static_cast<long>(later_.empty() ? timeout_us : std::min(timeout_us, 1000u)) * 1000};
    ppoll(p, n, &ts, nullptr);
  }

 private:
  enum class Kind : std::uint8_t { GetWhole, GetRange, Write, Wait, Asking };
  // One command in flight, with what it takes to send it again.
  struct Expect {
    Kind kind;
    std::uint64_t post;  // its post in posts_ (Wait and Asking: none)
    char* dst;
    std::uint32_t len;
    std::uint64_t page;
    const char* src = nullptr;  // a write's bytes (the frame stays ours until the post completes)
    std::uint32_t in_page = 0;  // a range's start in its page
    std::uint64_t retry_since_ns = 0;  // refused with TRYAGAIN or CLUSTERDOWN since then
  };
  struct Post {
    std::uint64_t cookie;
    std::size_t parts;  // not completed yet
    bool failed = false;
  };
  // This queue pair's connection to one node.
  struct Link {
    unsigned node;
    redisContext* c = nullptr;
    std::deque<Expect> expect;   // one per command in flight, in the order of their replies
    std::deque<Expect> unacked;  // writes the node holds, waiting for WAIT's replicas
    unsigned wait = 0;           // replicas its writes must reach (WAIT), fixed when connected
    bool unwaited = false;       // writes since the last WAIT
    bool resent = false;         // commands appended outside a post: poll() sends them
    std::uint64_t wait_since_ns = 0;
  };
  struct Later {
    std::uint64_t due_ns;
    Expect e;
  };
  struct Lost {};  // unwinds to the entry point after a pool member's Redis was lost, or a reconnect

  std::uint64_t start_post(std::uint64_t cookie, std::size_t parts) {
    if (posts_.empty()) progress_ns_ = now_ns();
    posts_.emplace(next_post_, Post{cookie, parts});
    return next_post_++;
  }
  void part_done(std::uint64_t post, bool failed = false) {
    auto it = posts_.find(post);
    if (it == posts_.end()) return;
    it->second.failed |= failed;
    if (--it->second.parts == 0) {
      done_.push_back({it->second.cookie, it->second.failed});
      posts_.erase(it);
    }
  }

  // This queue pair's link to node, connected; null when node is gone and a
  // failover moved its slots (the caller routes again).
  Link* link(unsigned node) {
    auto& l = links_.at(node);
    if (!l) l = std::make_unique<Link>(), l->node = node;
    if (l->c) return l.get();
    redisContext* c = nullptr;
    try {
      c = s_.open(node);
    } catch (const Error& e) {
      if (s_.survive) lost(e.what());
      c = s_.recover(node, e.what());
    }
    if (!c) return nullptr;
    make_nonblocking(c);
    l->c = c;
    l->wait = s_.wait_for(node);
    return l.get();
  }

  // Appends the command for e to the connection of the node that owns its
  // page's slot (or to_node, after ASKING, for an ASK) and expects its reply.
  void send(const Expect& e, int to_node = -1) {
    const std::string key = page_key(s_.prefix, e.page);
    for (;;) {
      const unsigned node = to_node >= 0 ? static_cast<unsigned>(to_node) : s_.owner(key_slot(key));
      Link* l = link(node);
      if (!l) {
        to_node = -1;
        continue;
      }
      if (to_node >= 0) {
        append(*l, {"ASKING"});
        l->expect.push_back({Kind::Asking, 0, nullptr, 0, 0});
      }
      switch (e.kind) {
        case Kind::GetWhole:
          append(*l, {"GET", key});
          break;
        case Kind::GetRange:
          append(*l, {"GETRANGE", key, std::to_string(e.in_page), std::to_string(e.in_page + e.len - 1)});
          break;
        case Kind::Write:
          if (e.len == kPageSize) append(*l, {"SET", key, std::string_view(e.src, e.len)});
          else append(*l, {"SETRANGE", key, std::to_string(e.in_page), std::string_view(e.src, e.len)});
          l->unwaited = true;
          break;
        case Kind::Wait:
        case Kind::Asking:
          return;
      }
      l->expect.push_back(e);
      return;
    }
  }

  // Sends again what TRYAGAIN or CLUSTERDOWN deferred, once its pause is over.
  void send_due() {
    const std::uint64_t now = now_ns();
    while (!later_.empty() && later_.front().due_ns <= now) {
      Expect e = later_.front().e;
      later_.pop_front();
      send(e);
      mark_resent();
    }
  }

  void mark_resent() {
    for (auto& l : links_)
      if (l && l->c) l->resent = true;
  }

  // Redis is gone or unusable. Alone, a broken connection is recovered; in a
  // pool, every post in flight and every later one completes as failed.
  [[noreturn]] void lost(const std::string& why) {
    if (!s_.survive) detail::fatal("redis: lost() alone (runtime bug): %s", why.c_str());
    dead_ = true;
    for (auto& [id, p] : posts_) done_.push_back({p.cookie, true});
    posts_.clear();
    later_.clear();
    for (auto& l : links_)
      if (l) {
        if (l->c) redisFree(l->c);
        l.reset();
      }
    throw Lost{};
  }

  // l's connection broke (why). Alone, it is recovered and every command
  // without an answer, and every write a WAIT has not confirmed, is sent again
  // to where its slot lives now.
  [[noreturn]] void broken(Link& l, const std::string& why) {
    if (s_.survive) lost(why);
    if (++resumes_ > 20) s_.gone(why + " (again and again)");
    std::deque<Expect> again;
    for (Expect& e : l.unacked) again.push_back(e);
    for (Expect& e : l.expect)
      if (e.kind != Kind::Wait && e.kind != Kind::Asking) again.push_back(e);
    l.unacked.clear();
    l.expect.clear();
    l.unwaited = false;
    l.wait_since_ns = 0;
    redisFree(l.c);
    l.c = s_.recover(l.node, why);  // null: its slots moved (a failover); send() routes anew
    if (l.c) make_nonblocking(l.c), l.wait = s_.wait_for(l.node);
    for (const Expect& e : again) send(e);
    for (auto& k : links_)
      if (k && k->c && k->unwaited && k->wait) append_wait(*k);
    mark_resent();
    progress_ns_ = now_ns();
    throw Lost{};
  }

  std::vector<Part> checked_split(std::uint64_t off, std::size_t len, const char* what) {
    auto parts = split(off, len);
    if (parts.empty())
      detail::fatal("redis: a %s of %zu bytes at %llu is not in whole 512-byte units (runtime bug)", what, len,
                    static_cast<unsigned long long>(off));
    return parts;
  }

  void append(Link& l, std::initializer_list<std::string_view> args) {
    const char* argv[4];
    std::size_t lens[4];
    int n = 0;
    for (std::string_view a : args) argv[n] = a.data(), lens[n++] = a.size();
    if (redisAppendCommandArgv(l.c, n, argv, lens) != REDIS_OK) detail::fatal("redis: out of memory");
  }

  void append_wait(Link& l) {
    append(l, {"WAIT", std::to_string(l.wait), std::to_string(kWaitTimeoutMs)});
    l.expect.push_back({Kind::Wait, 0, nullptr, 0, 0});
    l.unwaited = false;
    s_.waits.fetch_add(1, std::memory_order_relaxed);
  }

  // Writes l's whole output buffer; while the socket is full, reads replies so
  // Redis never blocks on us.
  void flush(Link& l) {
    int done = 0;
    while (!done) {
      int rc;
      {
        NoSigpipe quiet;
        rc = redisBufferWrite(l.c, &done);
      }
      if (rc != REDIS_OK) broken(l, l.c->errstr);
      if (done) break;
      receive(l);
      pollfd p{l.c->fd, POLLOUT | POLLIN, 0};
      ::poll(&p, 1, 100);
      check_silence();
    }
  }

  void receive(Link& l) {
    for (;;) {
      void* raw = nullptr;
      if (redisGetReplyFromReader(l.c, &raw) != REDIS_OK) broken(l, std::string("malformed reply: ") + l.c->errstr);
      if (!raw) {
        std::size_t before = l.c->reader->len;
        if (redisBufferRead(l.c) != REDIS_OK) broken(l, l.c->err == REDIS_ERR_EOF ? "it closed the connection" : l.c->errstr);
        if (l.c->reader->len == before) return;  // nothing more has arrived
        continue;
      }
      Reply r(raw);
      progress_ns_ = now_ns();
      if (l.expect.empty()) broken(l, "a reply to a request we did not send");
      Expect e = l.expect.front();
      l.expect.pop_front();
      on_reply(l, e, r.r);
    }
  }

  void on_reply(Link& l, Expect& e, const redisReply* r) {
    if (r->type == REDIS_REPLY_ERROR && e.kind != Kind::Asking) return on_error(l, e, text(r));
    switch (e.kind) {
      case Kind::Asking:
        break;  // its command's reply follows
      case Kind::GetWhole:
      case Kind::GetRange: {
        resumes_ = 0;
        if (r->type == REDIS_REPLY_NIL && s_.survive) {  // the pool reads the page elsewhere
          part_done(e.post, true);
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
        if (r->type != REDIS_REPLY_STRING) broken(l, "a GET answered with something other than a string");
        // Shorter than asked: the page was written in part (SETRANGE), the rest is zeros.
        std::size_t n = std::min<std::size_t>(e.len, r->len);
        std::memcpy(e.dst, r->str, n);
        std::memset(e.dst + n, 0, e.len - n);
        part_done(e.post);
        break;
      }
      case Kind::Write:
        if (l.wait) l.unacked.push_back(e);
        else part_done(e.post), resumes_ = 0;
        break;
      case Kind::Wait: {
        if (r->type != REDIS_REPLY_INTEGER) broken(l, "WAIT answered with something other than a number");
        if (r->integer >= static_cast<long long>(l.wait)) {
          std::deque<Expect> acked;
          acked.swap(l.unacked);
          for (const Expect& w : acked) part_done(w.post);
          resumes_ = 0;
          l.wait_since_ns = 0;
          break;
        }
        // Fewer replicas than asked hold the batch: ask again, until the silence limit.
        if (!l.wait_since_ns) l.wait_since_ns = now_ns();
        if (now_ns() - l.wait_since_ns > s_.silence_ns) {
          if (s_.survive) lost("its replicas did not acknowledge");
          detail::fatal("Redis at %s: only %lld of the %u replicas FARMEM_REDIS_WAIT asks for acknowledged written "
                        "pages within %llu s; bring its replicas back or lower FARMEM_REDIS_WAIT",
                        shown(s_.node(l.node)).c_str(), r->integer, l.wait,
                        static_cast<unsigned long long>(s_.silence_ns / 1000000000ull));
        }
        append_wait(l);
        flush(l);
        break;
      }
    }
  }

  // A command refused: a redirection is followed, a cluster busy moving or
  // failing over is asked again later, anything else ends the run (alone) or
  // fails the member (in a pool; a full one ends the run: far memory is full).
  void on_error(Link& l, Expect& e, const std::string& msg) {
    if (e.kind == Kind::Wait) broken(l, "it refused WAIT: " + msg);
    Redirect rd;
    if (parse_redirect(msg, s_.node(l.node).host, rd)) {
      if (!s_.uri.cluster) s_.not_standalone(msg);
      bool added = false;
      const unsigned to = s_.learn(rd.node, &added);
      if (added) {  // a master added to the cluster: its replicas (for WAIT) come with the map
        std::string unused;
        s_.reload_slots(unused);
      }
      if (rd.ask) {
        s_.redirects.fetch_add(1, std::memory_order_relaxed);
        send(e, static_cast<int>(to));
      } else {
        s_.moved(rd.slot, to);
        send(e);
      }
      mark_resent();
      return;
    }
    if (retry_later(msg) && s_.uri.cluster) {
      const std::uint64_t now = now_ns();
      if (!e.retry_since_ns) e.retry_since_ns = now;
      if (now - e.retry_since_ns > s_.silence_ns) {
        if (s_.survive) lost("it refused requests: " + msg);
        detail::fatal("the Redis Cluster at %s refused requests for %llu s: %s; bring the cluster back "
                      "(redis-cli --cluster check HOST:PORT)",
                      s_.uri.shown.c_str(), static_cast<unsigned long long>(s_.silence_ns / 1000000000ull),
                      msg.c_str());
      }
      later_.push_back({now + kRetryPauseNs, e});
      return;
    }
    if (!s_.survive || starts(msg, "OOM")) s_.refused(msg);
    lost("it refused a request: " + msg);
  }

  void check_silence() {
    if (now_ns() - progress_ns_ <= s_.silence_ns) return;
    if (s_.survive) lost("no answer for " + std::to_string(s_.silence_ns / 1000000) + " ms");
    detail::fatal("Redis at %s has not answered for %llu s; giving up", s_.uri.shown.c_str(),
                  static_cast<unsigned long long>(s_.silence_ns / 1000000000ull));
  }

  Shared& s_;
  std::vector<std::unique_ptr<Link>> links_;  // by node index, made when first used
  std::unordered_map<std::uint64_t, Post> posts_;
  std::uint64_t next_post_ = 0;
  std::deque<Completion> done_;
  std::deque<Later> later_;  // deferred by TRYAGAIN or CLUSTERDOWN, in due order
  unsigned resumes_ = 0;     // reconnects since the last confirmed batch
  bool dead_ = false;
  std::uint64_t progress_ns_ = 0;
};

}  // namespace

std::unique_ptr<QueuePair> make_queue_pair(Shared& s) { return std::make_unique<RedisQueuePair>(s); }

}  // namespace farmem::net::redis
