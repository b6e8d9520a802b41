// How much CPU the runtime's own threads take, and how long they waited for
// one (the kernel's schedstat): on a machine with few CPUs the evictor and the
// fault handler share them with the program, so FARMEM_STATS reports both.
#pragma once
#include <atomic>
#include <cstdint>

namespace farmem::detail {

struct ThreadTimes {
  std::uint64_t run_ns = 0, wait_ns = 0;  // on a CPU; runnable, waiting for one
  bool known = false;                      // schedstat was readable
};

// One runtime thread. start() and finish() run on the thread itself; finish()
// keeps its last reading, so statistics printed after the thread exited still
// show it.
class ThreadClock {
 public:
  void start();
  void finish();
  ThreadTimes read() const;  // the live thread's times, else the kept ones

 private:
  std::atomic<int> tid_{0};
  std::atomic<std::uint64_t> run_ns_{0}, wait_ns_{0};
  std::atomic<bool> kept_{false};
};

// /proc/self/task/TID/schedstat, parsed without the locale (parse_u64_fields).
ThreadTimes read_thread_times(int tid);

}  // namespace farmem::detail
