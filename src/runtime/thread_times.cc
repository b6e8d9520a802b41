// Runtime threads' CPU and wait times, from /proc/self/task/TID/schedstat.
#include "runtime/thread_times.hpp"

#include "runtime/os.hpp"

#include <fcntl.h>
#include <sys/syscall.h>
#include <unistd.h>

namespace farmem::detail {

ThreadTimes read_thread_times(int tid) {
  ThreadTimes t;
  if (tid <= 0) return t;
  char path[64] = "/proc/self/task/";
  std::size_t n = 16;
  char digits[16];
  std::size_t d = 0;
  for (int v = tid; v > 0 && d < sizeof digits; v /= 10) digits[d++] = static_cast<char>('0' + v % 10);
  while (d > 0) path[n++] = digits[--d];
  for (const char* s = "/schedstat"; *s; ++s) path[n++] = *s;
  path[n] = 0;
  const int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return t;
  char buf[128];
  const ssize_t got = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (got <= 0) return t;
  std::uint64_t field[2];
  parse_u64_fields(buf, static_cast<std::size_t>(got), field, 2);
  t.run_ns = field[0];
  t.wait_ns = field[1];
  t.known = true;
  return t;
}

void ThreadClock::start() {
  kept_.store(false, std::memory_order_relaxed);
  tid_.store(static_cast<int>(syscall(SYS_gettid)), std::memory_order_release);
}

void ThreadClock::finish() {
  const ThreadTimes t = read_thread_times(tid_.load(std::memory_order_relaxed));
  if (!t.known) return;
  run_ns_.store(t.run_ns, std::memory_order_relaxed);
  wait_ns_.store(t.wait_ns, std::memory_order_relaxed);
  kept_.store(true, std::memory_order_release);
}

ThreadTimes ThreadClock::read() const {
  if (kept_.load(std::memory_order_acquire))
    return {run_ns_.load(std::memory_order_relaxed), wait_ns_.load(std::memory_order_relaxed), true};
  return read_thread_times(tid_.load(std::memory_order_acquire));
}

}  // namespace farmem::detail
