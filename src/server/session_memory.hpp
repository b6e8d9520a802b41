// One client session's far memory on a farmem-server: its address space
// (mapped MAP_NORESERVE on hello, as large as the client asks, up to 64 TiB),
// which 4 KiB pages of it hold data, and its lease: the share of the server's
// --capacity granted to it. The lease grows page by page as pages are first
// written and shrinks as they are discarded, so a server refuses a client only
// when it is really full, on the write that does not fit. (Growing in larger
// steps would save a lock per new page but strand the steps' unused tails:
// one session could be refused while another holds free memory.) Used by the two-sided
// servers (tcp, dpdk); not thread-safe: a session lives on one listener's loop.
#pragma once
#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "server/capacity.hpp"

namespace farmem::server {

class SessionMemory {
 public:
  static constexpr std::uint64_t kMaxBytes = 1ull << 46;

  // Maps `bytes` (rounded up to pages) of address space for a session of
  // `client` (the peer, as the listener names it). Null, with *why, when that
  // is more than kMaxBytes or the mapping fails.
  static std::unique_ptr<SessionMemory> map(CapacityAccount& account, std::uint64_t bytes, const std::string& client,
                                            std::string* why);
  ~SessionMemory();  // unmaps, gives the lease back, counts the session closed
  SessionMemory(const SessionMemory&) = delete;
  SessionMemory& operator=(const SessionMemory&) = delete;

  char* base() const { return base_; }
  std::uint64_t size() const { return size_; }
  bool in_range(std::uint64_t off, std::uint64_t len) const { return off <= size_ && len <= size_ - off; }

  // Call before writing [off, off+len): grows the lease by what the pages it
  // touches for the first time need and marks them. False when the server is
  // full (nothing marked, nothing to write); *why is the message for the client.
  // Counts the bytes written.
  bool charge_write(std::uint64_t off, std::uint64_t len, std::string* why);
  // Counts bytes the client read.
  void note_read(std::uint64_t len) { usage_->read.fetch_add(len, std::memory_order_relaxed); }
  // Drops the whole pages inside [off, off+len) and shrinks the lease.
  void discard(std::uint64_t off, std::uint64_t len);

  // What the session holds, which is its lease: granted from the account.
  std::uint64_t used_bytes() const { return used_pages_ * 4096; }

 private:
  SessionMemory(CapacityAccount& account, char* base, std::uint64_t size, const std::string& client);
  // Which pages hold data: one bit each, in 32 KiB chunks (1 GiB of far memory
  // each) made on the first write there, so 64 TiB of address space costs 512 KiB.
  static constexpr std::uint64_t kPagesPerChunk = 1 << 18;
  using Chunk = std::array<std::uint64_t, kPagesPerChunk / 64>;
  std::uint64_t* word(std::uint64_t page, bool create);
  bool held(std::uint64_t page);

  CapacityAccount& account_;
  std::shared_ptr<ClientUsage> usage_;  // this session's row in the server's statistics
  char* const base_;
  const std::uint64_t size_;
  std::vector<std::unique_ptr<Chunk>> written_;
  std::uint64_t used_pages_ = 0;
};

}  // namespace farmem::server
