// The memcached text protocol (protocol.hpp): command lines, data blocks,
// replies and the stats reports. Which word counts a command accepts, when a
// data block is read or left to be parsed as commands, and every error string
// follow memcached 1.6 (checked side by side with Debian's memcached in
// test/cli/kv_clients_test.sh).
#include "protocol.hpp"

#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdio>

#include "farmem/runtime.hpp"
#include "farmem/uthread.hpp"

namespace farmem_kv {

namespace {

// memcached closes a connection whose line passes this without a newline,
// unless it is a multi-get; a multi-get line may grow to kMaxGetLine.
constexpr std::size_t kMaxLine = 2048;
constexpr std::size_t kMaxGetLine = 16u << 20;
constexpr std::size_t kFlushAt = 256u << 10;  // send replies once this many are queued
constexpr std::size_t kRecv = 64u << 10;

std::vector<std::string_view> split(std::string_view line) {
  std::vector<std::string_view> w;
  std::size_t i = 0;
  while (i < line.size()) {
    while (i < line.size() && line[i] == ' ') ++i;
    std::size_t j = i;
    while (j < line.size() && line[j] != ' ') ++j;
    if (j > i) w.push_back(line.substr(i, j - i));
    i = j;
  }
  return w;
}

// As memcached's safe_strtoull: an optional '+', digits, no overflow.
bool parse_u64(std::string_view s, std::uint64_t& out) {
  if (!s.empty() && s[0] == '+') s.remove_prefix(1);
  if (s.empty()) return false;
  out = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    const std::uint64_t d = static_cast<std::uint64_t>(c - '0');
    if (out > (UINT64_MAX - d) / 10) return false;
    out = out * 10 + d;
  }
  return true;
}

// As memcached's safe_strtol: a signed decimal within 32 bits.
bool parse_i32(std::string_view s, std::int64_t& out) {
  bool neg = false;
  if (!s.empty() && (s[0] == '-' || s[0] == '+')) neg = s[0] == '-', s.remove_prefix(1);
  std::uint64_t v;
  if (!parse_u64(s, v) || v > (neg ? 2147483648ull : 2147483647ull)) return false;
  out = neg ? -static_cast<std::int64_t>(v) : static_cast<std::int64_t>(v);
  return true;
}

std::string stat(std::string_view name, std::string_view v) {
  std::string s = "STAT ";
  s += name;
  s += ' ';
  s += v;
  s += "\r\n";
  return s;
}
std::string stat(std::string_view name, std::uint64_t v) { return stat(name, std::to_string(v)); }

}  // namespace

Connection::~Connection() { close(fd_); }

bool Connection::flush() {
  std::size_t off = 0;
  while (off < out_.size()) {
    ssize_t n = send(fd_, out_.data() + off, out_.size() - off, MSG_NOSIGNAL);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
      farmem::uthread::wait_fd(fd_, POLLOUT);
      continue;
    }
    if (n <= 0) return false;
    off += static_cast<std::size_t>(n);
  }
  srv_.bytes_written.fetch_add(out_.size(), std::memory_order_relaxed);
  out_.clear();
  return true;
}

// More input. Replies queued so far go out first: the client may be waiting
// for them before it sends more (pipelined commands are answered in one send).
bool Connection::fill() {
  if (!flush()) return false;
  if (pos_ > 0 && pos_ * 2 >= in_.size()) in_.erase(0, pos_), pos_ = 0;
  // Straight into the buffer: a uthread's stack is too small for a big one.
  const std::size_t had = in_.size();
  in_.resize(had + kRecv);
  for (;;) {
    ssize_t n = recv(fd_, in_.data() + had, kRecv, 0);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
      farmem::uthread::wait_fd(fd_, POLLIN);
      continue;
    }
    in_.resize(had + static_cast<std::size_t>(n > 0 ? n : 0));
    if (n <= 0) return false;
    srv_.bytes_read.fetch_add(static_cast<std::uint64_t>(n), std::memory_order_relaxed);
    return true;
  }
}

Connection::Line Connection::read_line(std::string& line) {
  std::size_t scanned = 0;  // bytes after pos_ known to hold no newline (fill() may move pos_)
  for (;;) {
    const std::size_t nl = in_.find('\n', pos_ + scanned);
    if (nl != std::string::npos) {
      const std::size_t end = nl > pos_ && in_[nl - 1] == '\r' ? nl - 1 : nl;
      line.assign(in_, pos_, end - pos_);
      pos_ = nl + 1;
      return Line::Ok;
    }
    const std::size_t have = in_.size() - pos_;
    scanned = have;
    if (have > kMaxLine) {
      // Only a multi-get may be this long (memcached's rule); others end the connection.
      std::size_t i = pos_;
      while (i < in_.size() && in_[i] == ' ') ++i;
      const std::string_view head(in_.data() + i, std::min<std::size_t>(in_.size() - i, 5));
      const bool get = head.starts_with("get ") || head.starts_with("gets ") || head.starts_with("gat ") ||
                       head.starts_with("gats ");
      if (!get) return Line::TooLong;
      if (have > kMaxGetLine) {
        out_ += "CLIENT_ERROR line too long\r\n";
        return Line::TooLong;
      }
    }
    if (!fill()) return Line::Closed;
  }
}

bool Connection::read_exact(std::string& out, std::size_t n) {
  while (in_.size() - pos_ < n)
    if (!fill()) return false;
  out.assign(in_, pos_, n);
  pos_ += n;
  return true;
}

// Reads and drops n bytes without holding them all.
bool Connection::skip(std::size_t n) {
  for (;;) {
    const std::size_t k = std::min(n, in_.size() - pos_);
    pos_ += k, n -= k;
    if (n == 0) return true;
    in_.clear(), pos_ = 0;
    if (!fill()) return false;
  }
}

void Connection::serve() {
  std::string line;
  for (;;) {
    const Line r = read_line(line);
    if (r != Line::Ok) break;
    if (!command(line)) break;
    if (out_.size() >= kFlushAt && !flush()) return;
  }
  flush();
}

// One command line, dispatched by its word count as memcached does: a wrong
// count is ERROR and a storage command's data block is then read as commands.
bool Connection::command(const std::string& line) {
  const std::vector<std::string_view> w = split(line);
  noreply_ = false;
  if (w.empty()) {
    reply("ERROR\r\n");
    return true;
  }
  const std::string_view cmd = w[0];
  const std::size_t n = w.size();
  if (cmd == "get" || cmd == "gets" || cmd == "gat" || cmd == "gats") {
    if (n < 2) reply("ERROR\r\n");
    else retrieval(w);
  } else if (cmd == "set" || cmd == "add" || cmd == "replace" || cmd == "append" || cmd == "prepend") {
    if (n != 5 && n != 6) reply("ERROR\r\n");
    else return storage(w);
  } else if (cmd == "cas") {
    if (n != 6 && n != 7) reply("ERROR\r\n");
    else return storage(w);
  } else if (cmd == "incr" || cmd == "decr") {
    if (n != 3 && n != 4) reply("ERROR\r\n");
    else arithmetic(w);
  } else if (cmd == "touch") {
    if (n != 3 && n != 4) reply("ERROR\r\n");
    else touch(w);
  } else if (cmd == "delete") {
    if (n < 2 || n > 4) reply("ERROR\r\n");
    else del(w);
  } else if (cmd == "stats") {
    stats(w);
  } else if (cmd == "flush_all") {
    if (n > 3) reply("ERROR\r\n");
    else flush_all(w);
  } else if (cmd == "version") {
    reply(std::string("VERSION ") + kVersion + "\r\n");
  } else if (cmd == "verbosity") {
    if (n != 2 && n != 3) reply("ERROR\r\n");
    else verbosity(w);
  } else if (cmd == "quit") {
    return false;
  } else {
    reply("ERROR\r\n");
  }
  return true;
}

// set/add/replace/append/prepend KEY FLAGS EXPTIME BYTES [noreply]
// cas KEY FLAGS EXPTIME BYTES CAS [noreply]
bool Connection::storage(const std::vector<std::string_view>& w) {
  const bool is_cas = w[0] == "cas";
  noreply_ = w.back() == "noreply";
  std::uint64_t flags, cas = 0;
  std::int64_t exptime, bytes;
  if (w[1].size() > Store::kMaxKey || !parse_u64(w[2], flags) || !parse_i32(w[3], exptime) ||
      !parse_i32(w[4], bytes) || (is_cas && !parse_u64(w[5], cas)) || bytes < 0 || bytes > INT_MAX - 2) {
    reply("CLIENT_ERROR bad command line format\r\n");  // the data block is left to be read as commands
    return true;
  }
  if (static_cast<std::size_t>(bytes) > Store::kMaxValue) {
    reply("SERVER_ERROR object too large for cache\r\n");
    if (w[0] == "set") store_.remove(w[1]);  // as memcached: a failed set leaves no stale value
    return skip(static_cast<std::size_t>(bytes) + 2);
  }
  std::string data;
  if (!read_exact(data, static_cast<std::size_t>(bytes) + 2)) return false;
  if (data[static_cast<std::size_t>(bytes)] != '\r' || data[static_cast<std::size_t>(bytes) + 1] != '\n') {
    reply("CLIENT_ERROR bad data chunk\r\n");
    return true;
  }
  data.resize(static_cast<std::size_t>(bytes));
  Store::Mode m = Store::Mode::Set;
  if (w[0] == "add") m = Store::Mode::Add;
  else if (w[0] == "replace") m = Store::Mode::Replace;
  else if (w[0] == "append") m = Store::Mode::Append;
  else if (w[0] == "prepend") m = Store::Mode::Prepend;
  else if (is_cas) m = Store::Mode::Cas;
  switch (store_.store(m, w[1], static_cast<std::uint32_t>(flags), store_.expiry_of(exptime), data, cas)) {
    case Store::Result::Stored: reply("STORED\r\n"); break;
    case Store::Result::NotStored: reply("NOT_STORED\r\n"); break;
    case Store::Result::Exists: reply("EXISTS\r\n"); break;
    case Store::Result::NotFound: reply("NOT_FOUND\r\n"); break;
    case Store::Result::TooLarge: reply("SERVER_ERROR object too large for cache\r\n"); break;
    case Store::Result::OutOfMemory:
      out_ += "SERVER_ERROR out of memory storing object\r\n";  // sent even with noreply, as memcached does
      break;
  }
  return true;
}

// get|gets KEY...  gat|gats EXPTIME KEY...
void Connection::retrieval(const std::vector<std::string_view>& w) {
  const bool with_cas = w[0] == "gets" || w[0] == "gats";
  const bool touch = w[0] == "gat" || w[0] == "gats";
  std::size_t first = 1;
  std::optional<std::int64_t> expiry;
  if (touch) {
    std::int64_t exptime;
    if (!parse_i32(w[1], exptime)) {
      reply("CLIENT_ERROR invalid exptime argument\r\n");
      return;
    }
    expiry = store_.expiry_of(exptime);
    first = 2;
  }
  for (std::size_t i = first; i < w.size(); ++i)
    if (w[i].size() > Store::kMaxKey) {
      reply("CLIENT_ERROR bad command line format\r\n");
      return;
    }
  for (std::size_t i = first; i < w.size(); ++i) {
    std::optional<Value> v = store_.get(w[i], expiry);
    if (!v) continue;
    out_ += "VALUE ";
    out_ += w[i];
    out_ += ' ';
    out_ += std::to_string(v->flags);
    out_ += ' ';
    out_ += std::to_string(v->data.size());
    if (with_cas) {
      out_ += ' ';
      out_ += std::to_string(v->cas);
    }
    out_ += "\r\n";
    out_ += v->data;
    out_ += "\r\n";
    if (out_.size() >= kFlushAt && !flush()) return;  // stream big answers instead of holding them all
  }
  out_ += "END\r\n";
}

// incr|decr KEY DELTA [noreply]
void Connection::arithmetic(const std::vector<std::string_view>& w) {
  noreply_ = w.back() == "noreply";
  std::uint64_t by, result = 0;
  if (w[1].size() > Store::kMaxKey) return reply("CLIENT_ERROR bad command line format\r\n");
  if (!parse_u64(w[2], by)) return reply("CLIENT_ERROR invalid numeric delta argument\r\n");
  switch (store_.delta(w[1], w[0] == "incr", by, result)) {
    case Store::DeltaResult::Ok: reply(std::to_string(result) + "\r\n"); break;
    case Store::DeltaResult::NotFound: reply("NOT_FOUND\r\n"); break;
    case Store::DeltaResult::NonNumeric:
      reply("CLIENT_ERROR cannot increment or decrement non-numeric value\r\n");
      break;
    case Store::DeltaResult::OutOfMemory: out_ += "SERVER_ERROR out of memory\r\n"; break;
  }
}

// touch KEY EXPTIME [noreply]
void Connection::touch(const std::vector<std::string_view>& w) {
  noreply_ = w.back() == "noreply";
  std::int64_t exptime;
  if (w[1].size() > Store::kMaxKey) return reply("CLIENT_ERROR bad command line format\r\n");
  if (!parse_i32(w[2], exptime)) return reply("CLIENT_ERROR invalid exptime argument\r\n");
  reply(store_.touch(w[1], store_.expiry_of(exptime)) ? "TOUCHED\r\n" : "NOT_FOUND\r\n");
}

// delete KEY [0] [noreply]
void Connection::del(const std::vector<std::string_view>& w) {
  if (w.size() > 2) {
    const bool zero = w[2] == "0";
    noreply_ = w.back() == "noreply";
    if (!((w.size() == 3 && (zero || noreply_)) || (w.size() == 4 && zero && noreply_)))
      return reply("CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\n");
  }
  if (w[1].size() > Store::kMaxKey) return reply("CLIENT_ERROR bad command line format\r\n");
  reply(store_.remove(w[1]) ? "DELETED\r\n" : "NOT_FOUND\r\n");
}

// flush_all [DELAY] [noreply]
void Connection::flush_all(const std::vector<std::string_view>& w) {
  noreply_ = w.back() == "noreply";
  std::int64_t delay = 0;
  if (w.size() != (noreply_ ? 2u : 1u) && !parse_i32(w[1], delay))
    return reply("CLIENT_ERROR invalid exptime argument\r\n");
  // A delay is seconds from now, or a unix time when over 30 days, as exptime.
  const std::int64_t at = delay > 0 ? store_.expiry_of(delay) : 0;
  store_.flush(at > 0 ? std::max<std::int64_t>(at - store_.now(), 0) : 0);
  reply("OK\r\n");
}

// verbosity LEVEL [noreply]: accepted and shown in stats settings; farmem-kv logs nothing per command.
void Connection::verbosity(const std::vector<std::string_view>& w) {
  noreply_ = w.back() == "noreply";
  std::uint64_t level;
  if (!parse_u64(w[1], level) || level > UINT_MAX) return reply("CLIENT_ERROR bad command line format\r\n");
  srv_.verbosity.store(static_cast<unsigned>(std::min<std::uint64_t>(level, 2)));
  reply("OK\r\n");
}

void Connection::stats(const std::vector<std::string_view>& w) {
  if (w.size() == 1) return stats_general();
  const std::string_view sub = w[1];
  if (sub == "reset") {
    store_.reset_counters();
    srv_.total_connections.store(0), srv_.rejected_connections.store(0);
    srv_.bytes_read.store(0), srv_.bytes_written.store(0);
    return reply("RESET\r\n");
  }
  if (sub == "settings") return stats_settings();
  if (sub == "items") return stats_items();
  if (sub == "slabs") return stats_slabs();
  if (sub == "cachedump") return stats_cachedump(w);
  reply("ERROR\r\n");
}

void Connection::stats_general() {
  const std::int64_t now = store_.now();
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  char user[32], sys[32];
  std::snprintf(user, sizeof user, "%ld.%06ld", static_cast<long>(ru.ru_utime.tv_sec), static_cast<long>(ru.ru_utime.tv_usec));
  std::snprintf(sys, sizeof sys, "%ld.%06ld", static_cast<long>(ru.ru_stime.tv_sec), static_cast<long>(ru.ru_stime.tv_usec));
  const Counters& c = store_.counters();
  auto get = [](const std::atomic<std::uint64_t>& a) { return a.load(std::memory_order_relaxed); };
  const farmem::Stats f = farmem::stats();
  std::string o;
  o += stat("pid", static_cast<std::uint64_t>(getpid()));
  o += stat("uptime", static_cast<std::uint64_t>(now - srv_.started));
  o += stat("time", static_cast<std::uint64_t>(now));
  o += stat("version", kVersion);
  o += stat("pointer_size", sizeof(void*) * 8);
  o += stat("rusage_user", user);
  o += stat("rusage_system", sys);
  o += stat("max_connections", srv_.max_connections);
  o += stat("curr_connections", get(srv_.curr_connections));
  o += stat("total_connections", get(srv_.total_connections));
  o += stat("rejected_connections", get(srv_.rejected_connections));
  o += stat("connection_structures", get(srv_.curr_connections));
  o += stat("cmd_get", get(c.cmd_get));
  o += stat("cmd_set", get(c.cmd_set));
  o += stat("cmd_flush", get(c.cmd_flush));
  o += stat("cmd_touch", get(c.cmd_touch));
  o += stat("get_hits", get(c.get_hits));
  o += stat("get_misses", get(c.get_misses));
  o += stat("get_expired", get(c.get_expired));
  o += stat("get_flushed", get(c.get_flushed));
  o += stat("delete_misses", get(c.delete_misses));
  o += stat("delete_hits", get(c.delete_hits));
  o += stat("incr_misses", get(c.incr_misses));
  o += stat("incr_hits", get(c.incr_hits));
  o += stat("decr_misses", get(c.decr_misses));
  o += stat("decr_hits", get(c.decr_hits));
  o += stat("cas_misses", get(c.cas_misses));
  o += stat("cas_hits", get(c.cas_hits));
  o += stat("cas_badval", get(c.cas_badval));
  o += stat("touch_hits", get(c.touch_hits));
  o += stat("touch_misses", get(c.touch_misses));
  o += stat("bytes_read", get(srv_.bytes_read));
  o += stat("bytes_written", get(srv_.bytes_written));
  o += stat("limit_maxbytes", store_.capacity());
  o += stat("accepting_conns", 1);
  o += stat("threads", farmem::uthread::scheduler_count());
  o += stat("bytes", store_.value_bytes());
  o += stat("curr_items", store_.items());
  o += stat("total_items", get(c.total_items));
  o += stat("expired_unfetched", get(c.expired_unfetched));
  o += stat("evicted_unfetched", get(c.evicted_unfetched));
  o += stat("evictions", get(c.evictions));
  o += stat("reclaimed", get(c.reclaimed));
  o += stat("outofmemory", get(c.outofmemory));
  // farmem's own: far slabs, and the runtime's paging under the values.
  o += stat("farmem_mode", store_.cache_mode() ? "cache" : "store");
  o += stat("farmem_slab_bytes", store_.far_bytes());
  o += stat("farmem_local_mem_bytes", f.local_mem_bytes);
  o += stat("farmem_resident_bytes", f.resident_bytes);
  o += stat("farmem_far_bytes", f.far_bytes);
  o += stat("farmem_faults", f.faults);
  o += stat("farmem_fetches", f.fetches);
  o += stat("farmem_page_evictions", f.evictions);
  o += stat("farmem_writebacks", f.writebacks);
  o += stat("farmem_fault_p99_ns", f.fault_p99_ns);
  o += "END\r\n";
  reply(o);
}

void Connection::stats_settings() {
  std::string o;
  o += stat("maxbytes", store_.capacity());
  o += stat("maxconns", srv_.max_connections);
  o += stat("tcpport", srv_.port);
  o += stat("udpport", 0);
  o += stat("inter", srv_.host);
  o += stat("verbosity", srv_.verbosity.load());
  o += stat("evictions", store_.cache_mode() ? "on" : "off");
  o += stat("growth_factor", "2.00");
  o += stat("chunk_size", 64);
  o += stat("num_threads", farmem::uthread::scheduler_count());
  o += stat("cas_enabled", "yes");
  o += stat("item_size_max", Store::kMaxValue);
  o += stat("slab_chunk_max", Store::kMaxValue);
  o += stat("slab_page_size", Store::kSlab);
  o += stat("flush_enabled", "yes");
  o += stat("dump_enabled", "yes");
  o += stat("farmem_mode", store_.cache_mode() ? "cache" : "store");
  o += stat("farmem_local_mem", srv_.local_mem_bytes);
  o += "END\r\n";
  reply(o);
}

void Connection::stats_items() {
  std::string o;
  for (const ClassStats& c : store_.class_stats()) {
    if (c.items == 0 && c.evicted == 0 && c.outofmemory == 0) continue;
    const std::string p = "items:" + std::to_string(c.id) + ":";
    o += stat(p + "number", c.items);
    o += stat(p + "evicted", c.evicted);
    o += stat(p + "outofmemory", c.outofmemory);
  }
  o += "END\r\n";
  reply(o);
}

void Connection::stats_slabs() {
  std::string o;
  std::uint64_t slabs = 0;
  const std::vector<ClassStats> cs = store_.class_stats();
  for (const ClassStats& c : cs) {
    const std::string p = std::to_string(c.id) + ":";
    o += stat(p + "chunk_size", c.chunk_size);
    o += stat(p + "chunks_per_page", Store::kSlab / c.chunk_size);
    o += stat(p + "total_pages", c.slabs);
    o += stat(p + "total_chunks", c.total_chunks);
    o += stat(p + "used_chunks", c.used_chunks);
    o += stat(p + "free_chunks", c.free_chunks);
    slabs += c.slabs;
  }
  o += stat("active_slabs", cs.size());
  o += stat("total_malloced", slabs * Store::kSlab);
  o += "END\r\n";
  reply(o);
}

// stats cachedump CLASS LIMIT: "ITEM key [bytes b; expiry s]" lines (memcdump reads them).
void Connection::stats_cachedump(const std::vector<std::string_view>& w) {
  std::uint64_t id, limit;
  if (w.size() < 4 || !parse_u64(w[2], id) || !parse_u64(w[3], limit)) return reply("CLIENT_ERROR bad command line\r\n");
  if (id >= 64) return reply("CLIENT_ERROR Illegal slab id\r\n");
  std::string o;
  store_.dump(static_cast<unsigned>(id), static_cast<unsigned>(std::min<std::uint64_t>(limit, UINT_MAX)),
              [&](const std::string& key, std::uint32_t bytes, std::int64_t expiry) {
                o += "ITEM " + key + " [" + std::to_string(bytes) + " b; " + std::to_string(expiry) + " s]\r\n";
              });
  o += "END\r\n";
  reply(o);
}

}  // namespace farmem_kv
