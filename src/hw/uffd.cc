// userfaultfd set-up and ioctls (see uffd.hpp).
#include "hw/uffd.hpp"

#include <fcntl.h>
#include <pwd.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "farmem/runtime.hpp"

#ifndef USERFAULTFD_IOC_NEW
#define USERFAULTFD_IOC_NEW _IO(0xAA, 0x00)
#endif

namespace farmem::hw {
namespace {
std::string user_name() {
  if (passwd* pw = getpwuid(geteuid())) return pw->pw_name;
  return std::to_string(geteuid());
}
}  // namespace

Uffd open_uffd(bool sigbus, bool user_mode_ok) {
  Uffd u;
  u.fd = static_cast<int>(syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK));
  u.how = "userfaultfd(2)";
  const int first_errno = errno;
  if (u.fd < 0 && (errno == EPERM || errno == ENOSYS)) {  // unprivileged: /dev/userfaultfd may be granted
    int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
    if (dev >= 0) {
      u.fd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
      close(dev);
      u.how = "/dev/userfaultfd";
    }
  }
  if (u.fd < 0 && first_errno == EPERM) {
    // What an unprivileged user gets with vm.unprivileged_userfaultfd=0.
    u.fd = static_cast<int>(syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY));
    if (u.fd >= 0 && !user_mode_ok) {
      close(u.fd);
      throw Error("userfaultfd serves this user only faults from user mode (vm.unprivileged_userfaultfd=0), "
                  "so system calls that read into far memory would fail with EFAULT; fix: sysctl -w "
                  "vm.unprivileged_userfaultfd=1, or give this user read-write access to /dev/userfaultfd "
                  "(setfacl -m u:" + user_name() + ":rw /dev/userfaultfd), or run as root");
    }
    u.how = "userfaultfd(2), user-mode only";
    u.user_mode_only = true;
  }
  if (u.fd < 0)
    throw Error(std::string("userfaultfd is not available (") + std::strerror(first_errno) +
                "); run as root, set sysctl vm.unprivileged_userfaultfd=1, or grant access to "
                "/dev/userfaultfd");
  const std::uint64_t want = UFFD_FEATURE_MOVE | (sigbus ? UFFD_FEATURE_SIGBUS : 0);
  uffdio_api api{UFFD_API, want, 0};
  if (ioctl(u.fd, UFFDIO_API, &api) != 0 || !(api.features & UFFD_FEATURE_MOVE)) {
    close(u.fd);
    if (sigbus) {  // the kernel may lack SIGBUS only: say which
      Uffd probe = open_uffd(false, true);
      close(probe.fd);
      throw Error("this kernel's userfaultfd lacks UFFD_FEATURE_SIGBUS (Linux 4.14 or newer); use "
                  "FARMEM_HW_FAULTS=thread");
    }
    throw Error("this kernel's userfaultfd lacks UFFDIO_MOVE (Linux 6.8 or newer); the transparent "
                "region needs it: use far pointers (FarArray) instead");
  }
  u.features = api.features;
  return u;
}

void register_range(int fd, void* addr, std::uint64_t len, bool wp) {
  uffdio_register r{};
  r.range.start = reinterpret_cast<std::uint64_t>(addr);
  r.range.len = len;
  r.mode = UFFDIO_REGISTER_MODE_MISSING | (wp ? UFFDIO_REGISTER_MODE_WP : 0);
  if (ioctl(fd, UFFDIO_REGISTER, &r) != 0) {
    if (wp && errno == EINVAL)
      throw Error("this kernel's userfaultfd cannot write-protect anonymous memory (Linux 5.7 or newer, "
                  "CONFIG_HAVE_ARCH_USERFAULTFD_WP); the transparent region needs it: use far pointers "
                  "(FarArray) instead");
    throw Error(std::string("cannot register the transparent region with userfaultfd: ") + std::strerror(errno));
  }
}

int write_protect(int fd, void* addr, std::uint64_t len, bool on) {
  uffdio_writeprotect w{{reinterpret_cast<std::uint64_t>(addr), len}, on ? UFFDIO_WRITEPROTECT_MODE_WP : 0};
  while (ioctl(fd, UFFDIO_WRITEPROTECT, &w) != 0)
    if (errno != EAGAIN) return errno;
  return 0;
}

int move_page(int fd, void* dst, void* src) {
  uffdio_move m{reinterpret_cast<std::uint64_t>(dst), reinterpret_cast<std::uint64_t>(src), 4096, 0, 0};
  for (;;) {
    if (ioctl(fd, UFFDIO_MOVE, &m) == 0) return 0;
    if (errno == EAGAIN && m.move == 0) continue;  // transient: try again
    return errno;
  }
}

int copy_page(int fd, void* dst, const void* src) {
  uffdio_copy c{reinterpret_cast<std::uint64_t>(dst), reinterpret_cast<std::uint64_t>(src), 4096, 0, 0};
  for (;;) {
    if (ioctl(fd, UFFDIO_COPY, &c) == 0) return 0;
    if (errno == EAGAIN && c.copy == 0) continue;
    return errno;
  }
}

int copy_pages(int fd, void* dst, const void* src, std::uint64_t pages, std::uint64_t* done, bool wp) {
  uffdio_copy c{reinterpret_cast<std::uint64_t>(dst), reinterpret_cast<std::uint64_t>(src), pages * 4096,
                wp ? UFFDIO_COPY_MODE_WP : 0, 0};
  *done = 0;
  for (;;) {
    if (ioctl(fd, UFFDIO_COPY, &c) == 0) {
      *done += pages;
      return 0;
    }
    const int e = errno;
    if (c.copy > 0) {  // part went in: go on with the rest
      const std::uint64_t n = static_cast<std::uint64_t>(c.copy) / 4096;
      *done += n;
      pages -= n;
      c.dst += n * 4096;
      c.src += n * 4096;
      c.len = pages * 4096;
      c.copy = 0;
      if (pages == 0) return 0;
      continue;
    }
    if (e == EAGAIN) continue;
    return e;
  }
}

void wake(int fd, void* addr, std::uint64_t len) {
  uffdio_range r{reinterpret_cast<std::uint64_t>(addr), len};
  ioctl(fd, UFFDIO_WAKE, &r);
}

}  // namespace farmem::hw
