// One session's far memory and lease (session_memory.hpp).
#include "server/session_memory.hpp"

#include <sys/mman.h>

namespace farmem::server {

namespace {
constexpr std::uint64_t kPage = 4096;

}  // namespace

std::unique_ptr<SessionMemory> SessionMemory::map(CapacityAccount& account, std::uint64_t bytes,
                                                  const std::string& client, std::string* why) {
  if (bytes == 0 || bytes > kMaxBytes) {
    *why = "a session's far memory must be between 4 KiB and 64 TiB; ask for less (FARMEM_FAR_MEM)";
    return nullptr;
  }
  const std::uint64_t size = (bytes + kPage - 1) / kPage * kPage;
  void* base = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (base == MAP_FAILED) {
    *why = "the server cannot map " + std::to_string(size >> 20) + " MiB of address space; ask for less (FARMEM_FAR_MEM)";
    return nullptr;
  }
  return std::unique_ptr<SessionMemory>(new SessionMemory(account, static_cast<char*>(base), size, client));
}

SessionMemory::SessionMemory(CapacityAccount& account, char* base, std::uint64_t size, const std::string& client)
    : account_(account),
      usage_(std::make_shared<ClientUsage>()),
      base_(base),
      size_(size),
      written_((size / kPage + kPagesPerChunk - 1) / kPagesPerChunk) {
  usage_->client = client;
  account_.session_opened(usage_);
}

SessionMemory::~SessionMemory() {
  munmap(base_, size_);
  account_.give_back(used_bytes(), *usage_);
  account_.session_closed(usage_);
}

std::uint64_t* SessionMemory::word(std::uint64_t page, bool create) {
  auto& chunk = written_[page / kPagesPerChunk];
  if (!chunk) {
    if (!create) return nullptr;
    chunk = std::make_unique<Chunk>();
  }
  return &(*chunk)[page % kPagesPerChunk / 64];
}

bool SessionMemory::held(std::uint64_t page) {
  const std::uint64_t* w = word(page, false);
  return w && (*w >> (page % 64) & 1);
}

bool SessionMemory::charge_write(std::uint64_t off, std::uint64_t len, std::string* why) {
  // A piece smaller than a page (erasure coding) still takes the page it lands on.
  const std::uint64_t first = off / kPage, end = (off + len + kPage - 1) / kPage;
  std::uint64_t fresh = 0;
  for (std::uint64_t p = first; p < end; ++p) fresh += !held(p);
  if (fresh == 0) {
    usage_->written.fetch_add(len, std::memory_order_relaxed);
    return true;
  }
  if (!account_.grant(fresh * kPage, *usage_)) {
    *why = "the server is full: " + account_.describe() +
           " (farmem-server --capacity); add servers to the pool or give this one more";
    return false;
  }
  for (std::uint64_t p = first; p < end; ++p) *word(p, true) |= std::uint64_t{1} << (p % 64);
  used_pages_ += fresh;
  usage_->written.fetch_add(len, std::memory_order_relaxed);
  return true;
}

void SessionMemory::discard(std::uint64_t off, std::uint64_t len) {
  const std::uint64_t first = (off + kPage - 1) / kPage, end = (off + len) / kPage;
  if (first >= end) return;
  madvise(base_ + first * kPage, (end - first) * kPage, MADV_DONTNEED);
  std::uint64_t dropped = 0;
  for (std::uint64_t p = first; p < end; ++p) {
    std::uint64_t* w = word(p, false);
    if (!w) continue;
    const std::uint64_t bit = std::uint64_t{1} << (p % 64);
    dropped += (*w & bit) != 0;
    *w &= ~bit;
  }
  used_pages_ -= dropped;
  account_.give_back(dropped * kPage, *usage_);
}

}  // namespace farmem::server
