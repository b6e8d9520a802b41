// Transparent pages leaving the region (the evictor's side, Evictor::finalize):
// write-protected by runs, written back from where they are, unmapped
// together, and the writers that blocked on the protection woken.
#include "hw/region.hpp"

#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "mem/page_state.hpp"
#include "runtime/fatal.hpp"
#include "runtime/runtime.hpp"

namespace farmem::hw {

using mem::Kind;
namespace ps = mem::ps;

void Region::protect(Leaving& l) {
  std::sort(l.vpns.begin(), l.vpns.end());
  l.ranges.clear();
  for (std::uint64_t v : l.vpns) {
    if (!l.ranges.empty() && (v - first_vpn_) / kBlockPages == (l.ranges.back().first - first_vpn_) / kBlockPages &&
        !mapped_between(l.ranges.back().first + l.ranges.back().second, v))
      l.ranges.back().second = v + 1 - l.ranges.back().first;
    else
      l.ranges.emplace_back(v, 1);
  }
  for (auto [first, pages] : l.ranges)
    if (int e = write_protect(uffd_.fd, page_addr(first), pages * 4096, true); e != 0)
      detail::fatal("cannot write-protect pages of the transparent region at %p (UFFDIO_WRITEPROTECT: %s)",
                    static_cast<void*>(page_addr(first)), std::strerror(e));
}

// A page of [from, to) that is here and stays (a group of kEvictPages that is
// not leaving): one range over it would write-protect it, and its next write
// would fault. Pages that are not here cost nothing to cover. The answer may be
// stale by the time of the write-protection; a page filled meanwhile is then
// covered, as a page filled inside a leaving group always was: its next write
// faults once. Only pages that leave need the protection, and they always get it.
bool Region::mapped_between(std::uint64_t from, std::uint64_t to) const {
  for (std::uint64_t v = from; v < to; ++v) {
    const Kind k = ps::kind(rt_.pt[v].load(std::memory_order_relaxed));
    if (k == Kind::Resident || k == Kind::Fetching) return true;
  }
  return false;
}

void Region::unmap_written(const Leaving& l) {
  std::vector<iovec> iov;
  iov.reserve(l.vpns.size());
  for (std::uint64_t v : l.vpns) {
    char* a = page_addr(v);
    if (!iov.empty() && static_cast<char*>(iov.back().iov_base) + iov.back().iov_len == a) iov.back().iov_len += 4096;
    else iov.push_back({a, 4096});
  }
  if (self_pidfd_ < 0) self_pidfd_ = static_cast<int>(syscall(SYS_pidfd_open, getpid(), 0));
  for (std::size_t k = 0; k < iov.size();) {
    const std::size_t n = std::min<std::size_t>(iov.size() - k, 1024);  // IOV_MAX
    long done = self_pidfd_ < 0 ? -1 : syscall(SYS_process_madvise, self_pidfd_, iov.data() + k, n, MADV_DONTNEED, 0);
    // No process_madvise (before Linux 5.10) or no pidfd: one range a call. It
    // may also stop early on an error: the ranges it did not reach go one a call,
    // because a page left mapped here would be used while the page table says far.
    std::size_t i = k;
    for (; done > 0 && i < k + n; ++i) {
      if (static_cast<std::size_t>(done) < iov[i].iov_len) break;
      done -= static_cast<long>(iov[i].iov_len);
    }
    for (; i < k + n; ++i) detail::kernel_madvise(iov[i].iov_base, iov[i].iov_len, MADV_DONTNEED);
    k += n;
  }
  // Wake the writers that blocked on the protection: their pages are gone, so
  // they fault again and fetch them. The protection is not lifted: a page of the
  // range that is here (filled meanwhile) may be clean and must stay protected,
  // or its next write would go unnoticed; one that was written has its next
  // write fault, and the fault path lifts the protection from it.
  for (auto [first, pages] : l.ranges) wake(uffd_.fd, page_addr(first), pages * 4096);
}

void Region::drop_page(std::uint64_t vpn) { detail::kernel_madvise(page_addr(vpn), 4096, MADV_DONTNEED); }

// After faults at a steady stride (1: sequential): claims the pages that
// follow vpn at that stride (remote or never touched, each with a free frame
// whose pool slot is empty), to come in with it: one batched fetch, and one
// UFFDIO_COPY per run of consecutive pages. Stops at the first page that
// cannot be claimed.

}  // namespace farmem::hw
