// The embedded memory server: holds one client's far memory in its own address
// space (so it never counts as the client's resident memory) and answers control
// requests. The client reads and writes pages directly with process_vm_*; this
// process only maps, reclaims and reports. It exits when the client goes away.
#include "transport/shm/shm_server.hpp"

#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>

#include "transport/shm/shm_wire.hpp"

namespace farmem::server {
namespace {

volatile sig_atomic_t g_stop = 0;
void on_term(int) { g_stop = 1; }

std::uint64_t self_rss_bytes() {
  std::ifstream f("/proc/self/statm");
  std::uint64_t size = 0, rss = 0;
  f >> size >> rss;
  return rss * static_cast<std::uint64_t>(sysconf(_SC_PAGESIZE));
}

}  // namespace

int run_shm(int fd, std::uint64_t capacity, bool huge_pages) {
  struct sigaction sa {};
  sa.sa_handler = on_term;
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  // Yama (ptrace_scope 1) lets an ancestor read us anyway; say so explicitly.
  prctl(PR_SET_PTRACER, PR_SET_PTRACER_ANY, 0, 0, 0);
  signal(SIGCHLD, SIG_IGN);  // snapshots made for forked clients reap themselves
  pid_t parent = getppid();

  void* base = mmap(nullptr, capacity, PROT_READ | PROT_WRITE,
                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (base == MAP_FAILED) {
    std::fprintf(stderr, "farmem-server: cannot reserve %llu bytes of far memory: %s\n",
                 static_cast<unsigned long long>(capacity), std::strerror(errno));
    return 1;
  }
  // Huge pages make the client's one-sided copies cheaper (fewer page walks);
  // small ones let the compressed tier's discards give memory back for good.
  madvise(base, capacity, huge_pages ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);

  net::shm::Hello hello{net::shm::kMagic, net::shm::kVersion,
                        static_cast<std::uint64_t>(getpid()),
                        reinterpret_cast<std::uint64_t>(base), capacity};
  if (send(fd, &hello, sizeof hello, MSG_NOSIGNAL) != sizeof hello) return 1;

  while (!g_stop) {
    pollfd p{fd, POLLIN, 0};
    int r = poll(&p, 1, 1000);
    if (r < 0 && errno == EINTR) continue;
    if (r == 0) {
      if (parent != 0 && getppid() != parent) break;  // client died without closing
      continue;
    }
    net::shm::Request req{};
    ssize_t n = recv(fd, &req, sizeof req, 0);
    if (n == 0) break;  // client closed
    if (n < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (n != sizeof req) continue;  // malformed: ignore
    switch (req.op) {
      case net::shm::Op::Discard:
        if (req.off <= capacity && req.len <= capacity - req.off)
          madvise(static_cast<char*>(base) + req.off, req.len, MADV_DONTNEED);
        break;
      case net::shm::Op::Usage: {
        net::shm::Reply rep{self_rss_bytes()};
        send(fd, &rep, sizeof rep, MSG_NOSIGNAL);
        break;
      }
      case net::shm::Op::Bye:
        g_stop = 1;
        break;
      case net::shm::Op::Fork: {
        // A snapshot for the client's forked child: fork ourselves (copy on
        // write) and hand the child's runtime a socket to the copy.
        int sv[2];
        net::shm::Reply rep{0};
        pid_t pid = -1;
        const bool have_sv = socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) == 0;
        if (have_sv) {
          pid = fork();
          if (pid == 0) {  // the copy: serves the child until its socket closes
            close(fd);
            close(sv[1]);
            fd = sv[0];
            parent = 0;
            continue;
          }
          close(sv[0]);
          if (pid > 0) rep.value = static_cast<std::uint64_t>(pid);
        }
        iovec iov{&rep, sizeof rep};
        alignas(cmsghdr) char ctl[CMSG_SPACE(sizeof(int))] = {};
        msghdr mh{};
        mh.msg_iov = &iov;
        mh.msg_iovlen = 1;
        if (pid > 0) {
          mh.msg_control = ctl;
          mh.msg_controllen = sizeof ctl;
          cmsghdr* cm = CMSG_FIRSTHDR(&mh);
          cm->cmsg_level = SOL_SOCKET;
          cm->cmsg_type = SCM_RIGHTS;
          cm->cmsg_len = CMSG_LEN(sizeof(int));
          std::memcpy(CMSG_DATA(cm), &sv[1], sizeof(int));
        }
        sendmsg(fd, &mh, MSG_NOSIGNAL);
        if (have_sv) close(sv[1]);
        break;
      }
    }
  }
  munmap(base, capacity);
  return 0;
}

}  // namespace farmem::server
