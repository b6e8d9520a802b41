// Per-core state: a thread's registration as a core (its queue pair, free-frame
// ring and TLB), software-TLB flushes, and the core's side of the shootdown
// protocol (acknowledgements and overflow pins).
#include <cstring>
#include <vector>

#include "mem/page_state.hpp"
#include "transport/queue_pair.hpp"
#include "runtime/fatal.hpp"
#include "runtime/runtime.hpp"

namespace farmem::detail {

std::atomic<std::uint64_t> g_shootdown_gen{0};

namespace {

// Runs at thread exit: the slot goes back to the evictor, which reclaims its ring.
struct CoreGuard {
  Core* core = nullptr;
  ~CoreGuard() {
    if (core == nullptr) return;
    core->ack.store(core->seen_gen | kOffline, std::memory_order_release);
    delete static_cast<net::QueuePair*>(core->qp);
    core->qp = nullptr;
    delete static_cast<std::vector<std::uint64_t>*>(core->pins);
    core->pins = nullptr;
    tls_core = nullptr;
    core->life.store(2, std::memory_order_release);
  }
};
thread_local CoreGuard tls_guard;

}  // namespace

Core& register_core() {
  Runtime& rt = runtime();
  InternalAlloc internal;
  for (unsigned i = 0; i < kMaxCores; ++i) {
    Core& c = rt.cores[i];
    std::uint32_t expect = 0;
    if (!c.life.compare_exchange_strong(expect, 1, std::memory_order_acq_rel)) continue;
    c.index = i;
    c.depth = 0;
    c.npins = 0;
    c.spare_frame = 0;
    std::memset(c.tlb, 0, sizeof c.tlb);
    c.seen_gen = g_shootdown_gen.load(std::memory_order_acquire);
    c.ack.store(c.seen_gen | kOffline, std::memory_order_release);
    c.qp = rt.transport->create_qp().release();
    std::uint32_t hwm = rt.core_hwm.load();
    while (hwm < i + 1 && !rt.core_hwm.compare_exchange_weak(hwm, i + 1)) {
    }
    tls_core = &c;
    tls_guard.core = &c;
    rt.kick_evictor();
    return c;
  }
  fatal("more than %u threads use far memory at once; this build supports %u", kMaxCores,
        kMaxCores);
}

void flush_tlb(Core& c) {
  for (auto& e : c.tlb) e.vpn = 0;
  c.stats.bump(c.stats.tlb_flushes);
}

void ack_point(Core& c) {
  std::uint64_t g = g_shootdown_gen.load(std::memory_order_acquire);
  if (g != c.seen_gen) {
    flush_tlb(c);
    c.seen_gen = g;
  }
  if (c.depth > 0) c.ack.store(g, std::memory_order_release);
}

void release_pins(Core& c) {
  auto* v = static_cast<std::vector<std::uint64_t>*>(c.pins);
  Runtime& rt = current();
  for (std::uint64_t vpn : *v) rt.pt[vpn].fetch_sub(mem::ps::kPinOne, std::memory_order_release);
  v->clear();
  c.npins = 0;
}

}  // namespace farmem::detail
