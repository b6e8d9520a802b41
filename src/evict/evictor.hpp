// The evictor: one thread, pinned to its own core, that keeps every core's free
// ring full so a fault never evicts. Eviction is a pipeline of batches:
//   select (CLOCK over accessed bits) -> mark Evicting -> shootdown (bump the
//   generation) -> ... later: all cores acked -> skip hazards/pins -> write back
//   dirty pages in one batch -> Remote -> frames to the free rings.
// Several batches are in flight at once; acks are checked, never waited on.
#pragma once
#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "transport/queue_pair.hpp"
#include "runtime/parking.hpp"

namespace farmem::detail {
struct Runtime;
}

namespace farmem::evict {

class Evictor {
 public:
  explicit Evictor(detail::Runtime& rt);
  ~Evictor();
  void start();
  void stop();
  // Far pages being freed: the evictor drops them (no write back) and hands the
  // range back to the far allocator (release = false: the range stays allocated
  // and reads as zeros, as after MADV_DONTNEED). Returns a ticket for wait_freed.
  std::uint64_t free_range(std::uint64_t first_page, std::uint64_t pages, bool release = true);
  void wait_freed(std::uint64_t ticket);
  // fork(): pause() drains every batch in flight and parks the evictor, so the
  // page table is at rest while the process is copied; resume() in the parent,
  // forget_thread() in the child (which has no evictor).
  void pause();
  void resume();
  void forget_thread();
  std::uint64_t free_frames() const { return free_count_.load(std::memory_order_relaxed); }

 private:
  struct Victim {
    std::uint64_t vpn;
    std::uint32_t frame;
  };
  struct Batch {
    std::vector<Victim> victims;
    std::uint64_t gen = 0;
  };

  void loop();
  bool refill_rings();
  bool reclaim_dead_cores();
  bool select_batch();
  void take_hw_group(Batch& b, std::uint64_t vpn);
  static constexpr std::size_t kHwBatchPages = 512;  // transparent pages a batch gathers (groups of 64)
  bool acked(std::uint64_t gen) const;
  void wait_acked(std::uint64_t gen) const;
  void finalize(Batch& b);
  void finish_front();
  void drain_pending();
  bool process_frees();
  void idle_wait(unsigned idle_rounds);
  std::vector<std::uint64_t> collect_hazards() const;
  void release_frame(std::uint32_t f);
  void count_frame_freed();
  void shoot_down(Batch&& b);
  void publish_free_count();
  void maybe_publish();
  std::uint64_t next_publish_ns_ = 0;
  bool info_connected_ = false, info_hw_ = false;  // what the published settings text showed
  // FARMEM_HW_FIRST_TOUCH=kernel: pages the kernel filled in unwatched chunks
  // of the transparent region hold budget too. The evictor estimates them from
  // the process's anonymous RSS, rescans them exactly with mincore when that
  // grew by budget/16, and withholds as many frames (reserved_) from the free
  // list, so faults stall and eviction starts exactly as if they were tracked.
  bool account_unwatched();
  std::uint64_t anon_rss_pages();
  bool take_unwatched(Batch& b);  // watches the oldest chunk holding kernel pages

  detail::Runtime& rt_;
  std::vector<std::uint32_t> free_;  // frames owned by the evictor
  std::deque<Batch> pending_;        // batches waiting for acknowledgements
  std::size_t pending_pages_ = 0;
  std::uint64_t hand_ = 0;           // CLOCK hand over frames
  std::uint32_t refill_rr_ = 0;      // first core served by the next refill
  std::unique_ptr<net::QueuePair> qp_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::atomic<std::uint64_t> free_count_{0};
  std::uint32_t high_wm_ = 0;
  std::vector<std::uint32_t> reserved_;  // frames standing for pages in unwatched chunks
  std::uint64_t unwatched_ = 0;          // pages present in unwatched chunks (estimate)
  std::uint64_t unwatched_scanned_ = 0;  // ... at the last exact scan, less what left since
  std::uint64_t anon_at_scan_ = 0;       // anonymous RSS pages at the last scan
  std::uint64_t next_account_ns_ = 0;
  int statm_fd_ = -1;

  struct FreeReq {
    std::uint64_t first, pages, ticket;
    bool release;
  };
  std::mutex frees_mu_;
  std::vector<FreeReq> frees_;
  std::uint64_t next_ticket_ = 0;
  std::atomic<bool> frees_pending_{false};
  std::atomic<std::uint32_t> frees_done_{0};  // last ticket done (low 32 bits)

  detail::Parking parking_;  // fork(): pause() / resume()
};

}  // namespace farmem::evict
