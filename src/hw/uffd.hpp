// userfaultfd: opening it (with the right privilege fallbacks), the features
// this runtime needs, and the ioctls it uses. Debian 12's headers predate
// UFFDIO_MOVE (Linux 6.8): it is defined here and detected at run time.
#pragma once
#include <linux/userfaultfd.h>

#include <cstdint>
#include <string>

#ifndef UFFDIO_MOVE
#define _UFFDIO_MOVE (0x05)
struct uffdio_move {
  __u64 dst;
  __u64 src;
  __u64 len;
  __u64 mode;
  __s64 move;
};
#define UFFDIO_MOVE _IOWR(UFFDIO, _UFFDIO_MOVE, struct uffdio_move)
#endif
#ifndef UFFD_FEATURE_MOVE
#define UFFD_FEATURE_MOVE (1 << 16)
#endif
#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif

namespace farmem::hw {

struct Uffd {
  int fd = -1;
  std::uint64_t features = 0;
  std::string how;  // which way it was opened (for the start-up line)
  bool user_mode_only = false;  // kernel-mode faults (system calls on missing pages) fail with EFAULT
};

// Opens a userfaultfd with UFFD_FEATURE_MOVE (and, with sigbus, UFFD_FEATURE_SIGBUS:
// a missing page raises SIGBUS in the faulting thread instead of queueing a
// message); throws farmem::Error naming the fix when the kernel or the
// privileges do not allow it. A user-mode-only userfaultfd (all an unprivileged
// user gets with vm.unprivileged_userfaultfd=0) is taken only if user_mode_ok:
// with it a system call that reads into a missing page fails with EFAULT.
Uffd open_uffd(bool sigbus = false, bool user_mode_ok = false);
// Registers [addr, addr+len) for missing-page faults (and, with wp, write-protect faults).
void register_range(int fd, void* addr, std::uint64_t len, bool wp = false);
// Write-protects [addr, addr+len) (on) or lifts it and wakes the threads that
// blocked writing there (off): one kernel TLB shootdown for the whole range.
// Returns 0 or errno.
int write_protect(int fd, void* addr, std::uint64_t len, bool on);
// Moves one page from src to dst (dst must be missing); returns 0 or errno.
// EBUSY: the page is shared with a forked child; EINVAL: the two mappings differ
// (the application mprotect()ed it). Callers fall back to copy_page.
int move_page(int fd, void* dst, void* src);
// Copies one page of bytes from src into missing page dst and wakes its waiters
// (UFFDIO_COPY); returns 0 or errno (EEXIST: dst is already there).
int copy_page(int fd, void* dst, const void* src);
// The same for `pages` consecutive pages in one call (wp: mapped write-protected,
// so the first write faults); returns 0 or errno, and *done says how many pages
// went in (from dst on) when it fails part way.
int copy_pages(int fd, void* dst, const void* src, std::uint64_t pages, std::uint64_t* done, bool wp = false);
void wake(int fd, void* addr, std::uint64_t len);

}  // namespace farmem::hw
