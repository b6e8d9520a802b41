// The memcached text protocol as farmem-kv speaks it: one Connection per
// client socket parses command lines and data blocks, runs them on the Store,
// and answers byte for byte as memcached 1.6 does (replies, error strings,
// noreply, how a bad command's data block is read or left). Server holds what
// every connection shares: settings shown by `stats settings` and the
// connection counters of `stats`.
#pragma once
#include <atomic>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "store.hpp"

namespace farmem_kv {

// The memcached release whose text protocol farmem-kv follows (replies were
// compared with Debian's memcached 1.6.18); libmemcached parses it.
inline constexpr const char* kVersion = "1.6.18-farmem";

struct Server {
  explicit Server(Store& s) : store(s) {}
  Store& store;
  std::string host;
  unsigned port = 0;
  unsigned max_connections = 0;
  std::uint64_t local_mem_bytes = 0;
  std::int64_t started = 0;  // unix seconds
  std::atomic<unsigned> verbosity{0};
  std::atomic<std::uint64_t> curr_connections{0}, total_connections{0}, rejected_connections{0}, bytes_read{0},
      bytes_written{0};
};

class Connection {
 public:
  Connection(int fd, Server& server) : fd_(fd), srv_(server), store_(server.store) {}
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;
  // Serves commands until quit, end of stream or a protocol violation that
  // memcached answers by closing.
  void serve();

 private:
  enum class Line { Ok, Closed, TooLong };
  Line read_line(std::string& line);
  bool fill();
  bool read_exact(std::string& out, std::size_t n);
  bool skip(std::size_t n);
  bool flush();
  void reply(std::string_view s) {
    if (!noreply_) out_.append(s);
  }

  bool command(const std::string& line);  // false: close the connection
  bool storage(const std::vector<std::string_view>& w);
  void retrieval(const std::vector<std::string_view>& w);
  void arithmetic(const std::vector<std::string_view>& w);
  void touch(const std::vector<std::string_view>& w);
  void del(const std::vector<std::string_view>& w);
  void flush_all(const std::vector<std::string_view>& w);
  void verbosity(const std::vector<std::string_view>& w);
  void stats(const std::vector<std::string_view>& w);
  void stats_general();
  void stats_settings();
  void stats_items();
  void stats_slabs();
  void stats_cachedump(const std::vector<std::string_view>& w);

  int fd_;
  Server& srv_;
  Store& store_;
  std::string in_;
  std::size_t pos_ = 0;  // start of the unread input in in_
  std::string out_;      // replies not yet sent
  bool noreply_ = false; // the current command asked for no reply
};

}  // namespace farmem_kv
