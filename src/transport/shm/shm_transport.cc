// The embedded `shm` transport: starts farmem-server as a child process and moves
// pages with process_vm_readv/process_vm_writev, which act like one-sided RDMA
// READ/WRITE: the server's CPU is not involved and its memory is never mapped
// here, so far pages do not count as our resident memory. A queue pair batches
// its posts into one system call per direction; FARMEM_SHM_DELAY_NS delays each
// completion to emulate a network round trip.
#include <dlfcn.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <deque>
#include <mutex>
#include <string>
#include <vector>

#include "farmem/runtime.hpp"
#include "farmem_build_config.h"
#include "transport/queue_pair.hpp"
#include "transport/shm/shm_transport.hpp"
#include "transport/shm/shm_wire.hpp"
#include "runtime/fatal.hpp"
#include "runtime/os.hpp"

extern char** environ;

namespace farmem::net {
namespace {

using detail::now_ns;

bool executable(const std::string& p) { return !p.empty() && access(p.c_str(), X_OK) == 0; }

std::string dir_of_self() {
  char buf[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) return {};
  buf[n] = 0;
  std::string s(buf);
  return s.substr(0, s.rfind('/'));
}

// The bin directory of the installed tree that holds this libfarmem.so (found
// wherever the tree was copied), or "" when it cannot be told.
std::string installed_bindir() {
  Dl_info info{};
  if (dladdr(reinterpret_cast<void*>(&installed_bindir), &info) == 0 || info.dli_fname == nullptr) return {};
  std::string lib = info.dli_fname;
  if (lib.find('/') == std::string::npos) return {};
  return lib.substr(0, lib.rfind('/')) + "/" FARMEM_LIB_TO_BIN;
}

// FARMEM_SERVER, then beside the program, then beside libfarmem.so in its
// installed tree, then the build tree, then the install prefix, then PATH.
std::string find_server(const Config& cfg) {
  if (!cfg.server_path.empty()) {
    if (!executable(cfg.server_path))
      throw Error("FARMEM_SERVER=" + cfg.server_path +
                  " is not an executable file; point it at the farmem-server binary");
    return cfg.server_path;
  }
  std::vector<std::string> candidates = {dir_of_self() + "/farmem-server"};
  if (std::string b = installed_bindir(); !b.empty()) candidates.push_back(b + "/farmem-server");
  candidates.push_back(FARMEM_BUILD_SERVER_PATH);
  candidates.push_back(std::string(FARMEM_BINDIR) + "/farmem-server");
  for (auto& c : candidates)
    if (executable(c)) return c;
  if (const char* path = getenv("PATH")) {
    std::string p = path;
    std::size_t pos = 0;
    while (pos <= p.size()) {
      std::size_t e = p.find(':', pos);
      if (e == std::string::npos) e = p.size();
      std::string c = p.substr(pos, e - pos) + "/farmem-server";
      if (executable(c)) return c;
      pos = e + 1;
    }
  }
  throw Error("cannot start the memory server: farmem-server not found; install it or set "
              "FARMEM_SERVER=/path/to/farmem-server");
}

class ShmQueuePair final : public QueuePair {
 public:
  ShmQueuePair(pid_t pid, std::uint64_t base, std::uint64_t capacity, std::uint64_t delay_ns)
      : pid_(pid), base_(base), capacity_(capacity), delay_ns_(delay_ns) {}

  void post_read(std::uint64_t off, void* local, std::size_t len, std::uint64_t cookie) override {
    check(off, len);
    reads_.add(local, base_ + off, len, cookie);
  }
  void post_write(std::uint64_t off, const void* local, std::size_t len,
                  std::uint64_t cookie) override {
    check(off, len);
    writes_.add(const_cast<void*>(local), base_ + off, len, cookie);
  }
  void submit() override {
    if (reads_.empty() && writes_.empty()) return;
    std::uint64_t ready = delay_ns_ ? now_ns() + delay_ns_ : 0;
    transfer(reads_, false, ready);
    transfer(writes_, true, ready);
  }
  std::size_t poll(Completion* out, std::size_t max) override {
    std::size_t n = 0;
    std::uint64_t now = 0;
    while (n < max && !done_.empty()) {
      if (done_.front().ready != 0) {
        if (now == 0) now = now_ns();
        if (done_.front().ready > now) break;
      }
      out[n++] = {done_.front().cookie};
      done_.pop_front();
    }
    return n;
  }

 private:
  struct Batch {
    std::vector<iovec> local, remote;
    std::vector<std::uint64_t> cookies;
    void add(void* l, std::uint64_t r, std::size_t len, std::uint64_t cookie) {
      local.push_back({l, len});
      remote.push_back({reinterpret_cast<void*>(r), len});
      cookies.push_back(cookie);
    }
    bool empty() const { return local.empty(); }
    void clear() { local.clear(); remote.clear(); cookies.clear(); }
  };
  struct Done {
    std::uint64_t ready;
    std::uint64_t cookie;
  };

  void check(std::uint64_t off, std::size_t len) const {
    if (off > capacity_ || len > capacity_ - off)
      detail::fatal("far page at offset %llu lies beyond the memory server's capacity (%llu bytes)",
                    static_cast<unsigned long long>(off), static_cast<unsigned long long>(capacity_));
  }

  void transfer(Batch& b, bool write, std::uint64_t ready) {
    std::size_t i = 0;
    while (i < b.local.size()) {
      std::size_t n = std::min<std::size_t>(b.local.size() - i, IOV_MAX);
      std::size_t want = 0;
      for (std::size_t k = i; k < i + n; ++k) want += b.local[k].iov_len;
      ssize_t got = write ? process_vm_writev(pid_, &b.local[i], n, &b.remote[i], n, 0)
                          : process_vm_readv(pid_, &b.local[i], n, &b.remote[i], n, 0);
      if (got < 0) {
        if (errno == EINTR) continue;
        if (errno == ESRCH)
          detail::fatal("the memory server (pid %d) is gone; far memory is lost: restart the "
                        "application", static_cast<int>(pid_));
        detail::fatal("cannot %s the memory server (pid %d): %s", write ? "write to" : "read from",
                      static_cast<int>(pid_), detail::errno_text(errno));
      }
      if (static_cast<std::size_t>(got) != want) {
        // Partial transfer: the iovec where it stopped is retried from its start
        // (page transfers are idempotent).
        std::size_t acc = 0, k = i;
        while (acc + b.local[k].iov_len <= static_cast<std::size_t>(got)) acc += b.local[k++].iov_len;
        for (std::size_t j = i; j < k; ++j) done_.push_back({ready, b.cookies[j]});
        i = k;
        continue;
      }
      for (std::size_t j = i; j < i + n; ++j) done_.push_back({ready, b.cookies[j]});
      i += n;
    }
    b.clear();
  }

  pid_t pid_;
  std::uint64_t base_, capacity_, delay_ns_;
  Batch reads_, writes_;
  std::deque<Done> done_;
};

class ShmTransport final : public Transport {
 public:
  explicit ShmTransport(const Config& cfg) : delay_ns_(cfg.shm_delay_ns) {
    std::string server = find_server(cfg);
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0)
      throw Error(std::string("cannot start the memory server: socketpair: ") + std::strerror(errno));
    fd_ = sv[0];
    int child_fd = sv[1];
    if (child_fd == 3) {  // dup2(3, 3) would keep FD_CLOEXEC
      child_fd = fcntl(sv[1], F_DUPFD_CLOEXEC, 4);
      close(sv[1]);
    }
    std::string cap = std::to_string(cfg.far_mem_bytes);
    const bool small = cfg.compress != "none";  // see run_shm
    const char* argv[] = {server.c_str(), "--shm-fd", "3", "--capacity", cap.c_str(), small ? "--small-pages" : nullptr,
                          nullptr};
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, child_fd, 3);
    // The server must not run under the preload shim (LD_PRELOAD is inherited):
    // it would start a runtime, and a server of its own, and so on.
    std::vector<char*> env;
    for (char** e = environ; *e; ++e)
      if (std::strncmp(*e, "FARMEM_SHIM_DISABLE=", 20) != 0) env.push_back(*e);
    env.push_back(const_cast<char*>("FARMEM_SHIM_DISABLE=1"));
    env.push_back(nullptr);
    // Its own session: signals meant for the program (Ctrl-C to the terminal's
    // process group, kill -TERM -PGID) must not take its far memory away. It
    // leaves when its socket closes or its parent changes.
    posix_spawnattr_t attr;
    posix_spawnattr_init(&attr);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSID);
    int rc = posix_spawn(&pid_, server.c_str(), &fa, &attr, const_cast<char**>(argv), env.data());
    posix_spawnattr_destroy(&attr);
    posix_spawn_file_actions_destroy(&fa);
    close(child_fd);
    if (rc != 0) {
      close(fd_);
      throw Error("cannot start the memory server " + server + ": " + std::strerror(rc) +
                  "; set FARMEM_SERVER to a working farmem-server binary");
    }
    shm::Hello hello{};
    int got = recv_timed(&hello, sizeof hello, 10000) ? 1 : 0;
    if (!got || hello.magic != shm::kMagic) {
      int status = 0;
      std::string why = "did not answer within 10 s";
      bool exited = false;
      for (int i = 0; i < 100 && !exited; ++i) {  // it may be exiting right now
        exited = waitpid(pid_, &status, WNOHANG) == pid_;
        if (!exited) usleep(10000);
      }
      if (exited) {
        pid_ = -1;
        why = WIFEXITED(status) ? "exited with status " + std::to_string(WEXITSTATUS(status))
                                : "was killed by signal " + std::to_string(WTERMSIG(status));
      } else if (hello.magic != 0 && hello.magic != shm::kMagic) {
        why = "answered with a bad handshake";
      }
      shutdown();
      throw Error("the memory server " + server + " failed to start (" + why +
                  "); check FARMEM_SERVER and FARMEM_FAR_MEM");
    }
    if (hello.version != shm::kVersion) {
      shutdown();
      throw Error("the memory server speaks protocol version " + std::to_string(hello.version) +
                  ", this runtime " + std::to_string(shm::kVersion) +
                  "; use the farmem-server built with this library");
    }
    base_ = hello.base;
    capacity_ = hello.capacity;
    // One-sided access must be allowed (ptrace permission); find out now, not on a fault.
    char probe;
    iovec l{&probe, 1}, r{reinterpret_cast<void*>(base_), 1};
    if (process_vm_readv(pid_, &l, 1, &r, 1, 0) != 1) {
      int e = errno;
      shutdown();
      throw Error(std::string("cannot read the memory server's memory (process_vm_readv: ") +
                  std::strerror(e) + "); allow ptrace of child processes (kernel.yama.ptrace_scope <= 1)");
    }
  }
  ~ShmTransport() override { shutdown(); }

  std::unique_ptr<QueuePair> create_qp() override {
    return std::make_unique<ShmQueuePair>(pid_, base_, capacity_, delay_ns_);
  }
  void discard(std::uint64_t off, std::uint64_t len) override {
    std::lock_guard<std::mutex> g(mu_);
    shm::Request req{shm::Op::Discard, 0, off, len};
    if (fd_ >= 0) send(fd_, &req, sizeof req, MSG_NOSIGNAL);
  }
  // Discards go on the control socket without an answer: a usage request
  // behind them is answered after they are done.
  void sync_discards() override { remote_usage(); }
  std::uint64_t remote_usage() override {
    std::lock_guard<std::mutex> g(mu_);
    shm::Request req{shm::Op::Usage, 0, 0, 0};
    if (fd_ < 0 || send(fd_, &req, sizeof req, MSG_NOSIGNAL) != sizeof req) return 0;
    shm::Reply rep{};
    return recv_timed(&rep, sizeof rep, 2000) ? rep.value : 0;
  }
  void shutdown() override {
    std::lock_guard<std::mutex> g(mu_);
    if (fd_ >= 0) {
      shm::Request req{shm::Op::Bye, 0, 0, 0};
      send(fd_, &req, sizeof req, MSG_NOSIGNAL);
      close(fd_);
      fd_ = -1;
    }
    if (pid_ > 0 && !own_child_) {  // a snapshot server: it exits when its socket closes
      pid_ = -1;
      return;
    }
    if (pid_ > 0) {
      for (int i = 0; i < 200; ++i) {  // up to 2 s, then kill
        if (waitpid(pid_, nullptr, WNOHANG) == pid_) { pid_ = -1; return; }
        usleep(10000);
      }
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
      pid_ = -1;
    }
  }
  bool fork_prepare() override {
    std::lock_guard<std::mutex> g(mu_);
    fork_fd_ = -1;
    shm::Request req{shm::Op::Fork, 0, 0, 0};
    if (fd_ < 0 || send(fd_, &req, sizeof req, MSG_NOSIGNAL) != sizeof req) return false;
    shm::Reply rep{};
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, 10000) <= 0) return false;
    iovec iov{&rep, sizeof rep};
    alignas(cmsghdr) char ctl[CMSG_SPACE(sizeof(int))] = {};
    msghdr mh{};
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = ctl;
    mh.msg_controllen = sizeof ctl;
    if (recvmsg(fd_, &mh, MSG_CMSG_CLOEXEC) != sizeof rep || rep.value == 0) return false;
    cmsghdr* cm = CMSG_FIRSTHDR(&mh);
    if (cm == nullptr || cm->cmsg_type != SCM_RIGHTS) return false;
    std::memcpy(&fork_fd_, CMSG_DATA(cm), sizeof(int));
    fork_pid_ = static_cast<pid_t>(rep.value);
    return true;
  }
  void fork_parent() override {
    if (fork_fd_ >= 0) close(fork_fd_);
    fork_fd_ = -1;
  }
  void fork_child() override {
    // The parent's server stays the parent's; this process talks to the snapshot.
    if (fd_ >= 0) close(fd_);
    fd_ = fork_fd_;
    pid_ = fork_fd_ >= 0 ? fork_pid_ : -1;
    fork_fd_ = -1;
    own_child_ = false;
  }
  std::string describe() const override {
    return "shm (farmem-server pid " + std::to_string(pid_) + ", delay " +
           std::to_string(delay_ns_) + " ns)";
  }

 private:
  bool recv_timed(void* buf, std::size_t len, int timeout_ms) {
    pollfd p{fd_, POLLIN, 0};
    for (;;) {
      int r = ::poll(&p, 1, timeout_ms);
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) return false;
      ssize_t n = recv(fd_, buf, len, 0);
      if (n < 0 && errno == EINTR) continue;
      return n == static_cast<ssize_t>(len);
    }
  }

  std::uint64_t delay_ns_;
  int fd_ = -1;
  pid_t pid_ = -1;
  bool own_child_ = true;  // false in a forked child: pid_ is a snapshot we did not start
  int fork_fd_ = -1;
  pid_t fork_pid_ = -1;
  std::uint64_t base_ = 0, capacity_ = 0;
  std::mutex mu_;
};

}  // namespace

std::unique_ptr<Transport> connect_shm(const Config& cfg) { return std::make_unique<ShmTransport>(cfg); }

void check_shm(const Config& cfg) { (void)find_server(cfg); }

}  // namespace farmem::net
