// The reaper (see reaper.hpp).
#include "transport/redis/reaper.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "transport/redis/control.hpp"

namespace farmem::net::redis {
namespace {

std::string resp(const std::vector<std::string>& args) {
  std::string out;
  out.append("*").append(std::to_string(args.size())).append("\r\n");
  for (const auto& a : args) out.append("$").append(std::to_string(a.size())).append("\r\n").append(a).append("\r\n");
  return out;
}

std::size_t put(char* dst, const char* text) {
  std::size_t n = std::strlen(text);
  std::memcpy(dst, text, n);
  return n;
}

std::size_t put_u64(char* dst, std::uint64_t v) {
  char digits[24];
  std::size_t n = 0;
  do digits[n++] = static_cast<char>('0' + v % 10), v /= 10;
  while (v);
  for (std::size_t i = 0; i < n; ++i) dst[i] = digits[n - 1 - i];
  return n;
}

bool send_all(int fd, const char* p, std::size_t len) {
  while (len) {
    ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
    if (n <= 0 && errno != EINTR) return false;
    if (n > 0) p += n, len -= static_cast<std::size_t>(n);
  }
  return true;
}

}  // namespace

Reaper::~Reaper() {
  if (keep_open_ >= 0) close(keep_open_);
}

void Reaper::start(const Shared& s) {
  if (!s.uri.password.empty()) {
    std::vector<std::string> auth{"AUTH"};
    if (!s.uri.user.empty()) auth.push_back(s.uri.user);
    auth.push_back(s.uri.password);
    preamble_ += resp(auth), ++preamble_cmds_;
  }
  if (s.uri.db) preamble_ += resp({"SELECT", std::to_string(s.uri.db)}), ++preamble_cmds_;
  prefix_ = s.prefix;
  view_ = s.view;
  written_ = s.written;
  words_ = (s.npages + 63) / 64;
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return;
  long mid = syscall(SYS_clone, SIGCHLD, nullptr, nullptr, nullptr, nullptr);
  if (mid == 0) {
    if (syscall(SYS_clone, SIGCHLD, nullptr, nullptr, nullptr, nullptr) == 0) run(fds[0]);
    _exit(0);  // the middle process: the reaper is not our child, a wait() for all children ignores it
  }
  close(fds[0]);
  if (mid > 0) {
    while (waitpid(static_cast<pid_t>(mid), nullptr, 0) < 0 && errno == EINTR) {
    }
    keep_open_ = fds[1];  // closed by our exit (or exec): the reaper's signal
  } else {
    close(fds[1]);
  }
}

int Reaper::open_node(const ReaperView::Address& a) const {
  int f = a.len ? socket(a.sa.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0) : -1;
  if (f < 0) return -1;
  timeval tv{10, 0};
  setsockopt(f, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(f, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  if (connect(f, reinterpret_cast<const sockaddr*>(&a.sa), a.len) != 0 || !send_all(f, preamble_.data(), preamble_.size())) {
    close(f);
    return -1;
  }
  return f;
}

std::uint32_t Reaper::fresh_map(ReaperView::Address* addr, std::uint16_t* owner, std::uint32_t nodes) const {
  static const char ask[] = "*2\r\n$7\r\nCLUSTER\r\n$5\r\nSLOTS\r\n";
  constexpr std::size_t kReplyMax = 8 << 20;  // a map cut into many ranges; mmap, as malloc is not ours to call
  void* m = mmap(nullptr, kReplyMax, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (m == MAP_FAILED) return nodes;
  char* buf = static_cast<char*>(m);
  static SlotOwner masters[kMaxNodes];
  static std::uint16_t fresh[kSlots];
  for (unsigned asked = 0; asked < nodes; ++asked) {
    int f = open_node(addr[asked]);
    if (f < 0 || !send_all(f, ask, sizeof ask - 1)) {
      if (f >= 0) close(f);
      continue;
    }
    std::size_t len = 0, at = 0;
    std::uint64_t lines = 0;  // the preamble's replies, one line each, come first
    long used = 0;
    unsigned count = 0;
    while (len < kReplyMax) {
      ssize_t got = read(f, buf + len, kReplyMax - len);
      if (got <= 0) break;
      len += static_cast<std::size_t>(got);
      for (; lines < preamble_cmds_ && at < len; ++at) lines += buf[at] == '\n';
      if (lines < preamble_cmds_) continue;
      used = parse_cluster_slots(buf + at, len - at, masters, kMaxNodes, &count, fresh);
      if (used != 0) break;
    }
    close(f);
    if (used <= 0) continue;
    // Each master's address: an IP (what Redis gives unless told to announce names), or the asked node's.
    const ReaperView::Address base = addr[asked];
    for (unsigned i = 0; i < count; ++i) {
      ReaperView::Address a{};
      const SlotOwner& o = masters[i];
      auto* v4 = reinterpret_cast<sockaddr_in*>(&a.sa);
      auto* v6 = reinterpret_cast<sockaddr_in6*>(&a.sa);
      if (o.host[0] == 0 || std::strcmp(o.host, "?") == 0) {
        a = base;
        if (a.sa.ss_family == AF_INET) v4->sin_port = htons(static_cast<std::uint16_t>(o.port));
        else v6->sin6_port = htons(static_cast<std::uint16_t>(o.port));
      } else if (inet_pton(AF_INET, o.host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET, v4->sin_port = htons(static_cast<std::uint16_t>(o.port)), a.len = sizeof *v4;
      } else if (inet_pton(AF_INET6, o.host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6, v6->sin6_port = htons(static_cast<std::uint16_t>(o.port)), a.len = sizeof *v6;
      }  // else a host name, which would need the resolver's malloc: len 0, its keys stay
      addr[i] = a;
    }
    for (unsigned s = 0; s < kSlots; ++s) owner[s] = fresh[s];
    munmap(m, kReplyMax);
    return count;
  }
  munmap(m, kReplyMax);
  return nodes;
}

void Reaper::run(int pipe_read) {
  setsid();  // the terminal's Ctrl-C and hang-up are for the program, not for us
  for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGPIPE, SIGTSTP, SIGTTIN, SIGTTOU}) signal(sig, SIG_IGN);
  prctl(PR_SET_NAME, "farmem-reaper");
  prctl(PR_SET_PDEATHSIG, 0);
  int null = open("/dev/null", O_RDWR);
  for (int fd = 0; fd < 3; ++fd) dup2(null, fd);
  // Hold none of the program's descriptors (its sockets, the pipe its reader waits on).
  if (pipe_read > 3) close_range(3, pipe_read - 1, 0);
  close_range(pipe_read + 1, ~0u, 0);
  char byte;
  while (read(pipe_read, &byte, 1) != 0 && errno == EINTR) {
  }
  bool any = false;
  for (std::uint64_t w = 0; w < words_ && !any; ++w) any = written_[w].load(std::memory_order_relaxed) != 0;
  if (!any) _exit(0);

  // Where each slot lives: in a cluster, asked afresh (a resharding or failover
  // since our last redirection would send keys to a node that no longer has
  // them); otherwise, or if no node answers, as we last knew it.
  static ReaperView::Address addr[kMaxNodes];
  static std::uint16_t owner[kSlots];
  std::uint32_t nodes = view_->nodes.load(std::memory_order_acquire);
  for (unsigned i = 0; i < nodes; ++i) addr[i] = view_->addr[i];
  for (unsigned s = 0; s < kSlots; ++s) owner[s] = view_->owner[s].load(std::memory_order_relaxed);
  if (view_->cluster) nodes = fresh_map(addr, owner, nodes);

  // A connection to each node that owns a marked page's slot, opened when first needed.
  static int fd[kMaxNodes];
  static std::uint64_t commands[kMaxNodes];
  for (unsigned i = 0; i < kMaxNodes; ++i) fd[i] = -1;
  auto connection = [&](unsigned node) -> int {
    if (node >= nodes || fd[node] == -2) return -1;
    if (fd[node] >= 0) return fd[node];
    int f = open_node(addr[node]);
    if (f < 0) {
      fd[node] = -2;  // gone: its keys stay (docs/redis.md says how to find them)
      return -1;
    }
    commands[node] = preamble_cmds_;
    return fd[node] = f;
  };
  // UNLINK in batches of one node and, in a cluster, one stripe (one slot):
  // *N $6 UNLINK then $len key for each page.
  static char buf[1 << 16];
  std::uint64_t page_of[kUnlinkBatch];
  std::size_t n = 0;
  unsigned batch_node = 0;
  auto flush = [&] {
    if (!n) return;
    std::size_t len = 0;
    len += put(buf + len, "*"), len += put_u64(buf + len, n + 1), len += put(buf + len, "\r\n$6\r\nUNLINK\r\n");
    for (std::size_t i = 0; i < n; ++i) {
      char key[256];
      std::size_t k = put(key, prefix_.c_str());
      k += put_u64(key + k, page_of[i] / kPagesPerStripe);
      k += put(key + k, "}:");
      k += put_u64(key + k, page_of[i]);
      len += put(buf + len, "$"), len += put_u64(buf + len, k), len += put(buf + len, "\r\n");
      std::memcpy(buf + len, key, k), len += k;
      len += put(buf + len, "\r\n");
    }
    int f = connection(batch_node);
    if (f >= 0 && send_all(f, buf, len)) ++commands[batch_node];
    else if (f >= 0) close(f), fd[batch_node] = -2;
    n = 0;
  };
  for (std::uint64_t w = 0; w < words_; ++w)
    for (std::uint64_t bits = written_[w].load(std::memory_order_relaxed); bits; bits &= bits - 1) {
      const std::uint64_t page = w * 64 + static_cast<unsigned>(__builtin_ctzll(bits));
      unsigned node = 0;
      if (view_->cluster) {
        node = owner[stripe_slot(prefix_, page / kPagesPerStripe)];
        if (n && (node != batch_node || page / kPagesPerStripe != page_of[0] / kPagesPerStripe)) flush();
      }
      batch_node = node;
      page_of[n++] = page;
      if (n == kUnlinkBatch) flush();
    }
  flush();
  // Every reply is one line (+OK, :N or -ERR): wait for them all before closing.
  for (unsigned i = 0; i < nodes; ++i) {
    if (fd[i] < 0) continue;
    for (std::uint64_t lines = 0; lines < commands[i];) {
      ssize_t got = read(fd[i], buf, sizeof buf);
      if (got <= 0) break;
      for (ssize_t j = 0; j < got; ++j) lines += buf[j] == '\n';
    }
  }
  _exit(0);
}

}  // namespace farmem::net::redis
