// The C API over the transparent region (include/farmem/farmem.h).
#include "farmem/farmem.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <mutex>

#include "farmem/runtime.hpp"
#include "hw/region.hpp"
#include "runtime/runtime.hpp"

namespace farmem::hw {
namespace {
std::mutex g_mu;
bool g_failed = false;
}  // namespace

Region* shared_region() {
  farmem::detail::Runtime& rt = farmem::detail::runtime();
  if (auto* r = rt.hw.load(std::memory_order_acquire)) return r;
  std::lock_guard<std::mutex> g(g_mu);
  if (auto* r = rt.hw.load(std::memory_order_acquire)) return r;
  if (g_failed) return nullptr;
  farmem::detail::InternalAlloc internal;
  try {
    auto* r = new Region(rt, rt.cfg.hw_mem_bytes);
    rt.hw.store(r, std::memory_order_release);
    return r;
  } catch (const farmem::Error& e) {
    g_failed = true;
    std::fprintf(stderr, "farmem: %s\n", e.what());
    return nullptr;
  }
}
}  // namespace farmem::hw

namespace {
farmem::hw::Region* region() { return farmem::hw::shared_region(); }
}  // namespace

extern "C" {

void* farmem_malloc(size_t size) {
  farmem::hw::Region* r = region();
  if (r == nullptr) {
    errno = ENOSYS;
    return nullptr;
  }
  void* p = r->alloc(size);
  if (p == nullptr) errno = ENOMEM;
  // Register this thread now, in ordinary context, rather than on its first
  // fault inside the SIGBUS handler (FARMEM_HW_FAULTS=signal).
  if (r->in_thread()) farmem::detail::this_core();
  return p;
}

void* farmem_calloc(size_t count, size_t size) {
  if (size && count > static_cast<size_t>(-1) / size) {
    errno = ENOMEM;
    return nullptr;
  }
  return farmem_malloc(count * size);  // region pages start zeroed
}

void farmem_free(void* ptr) {
  if (ptr == nullptr) return;
  farmem::detail::Runtime* rt = farmem::detail::g_runtime_ptr.load(std::memory_order_acquire);
  farmem::hw::Region* r = rt ? rt->hw.load(std::memory_order_acquire) : nullptr;
  if (r == nullptr || !r->free(ptr)) {
    std::fprintf(stderr, "farmem: farmem_free(%p): not a pointer from farmem_malloc\n", ptr);
    std::abort();
  }
}

size_t farmem_usable_size(void* ptr) {
  farmem::detail::Runtime* rt = farmem::detail::g_runtime_ptr.load(std::memory_order_acquire);
  farmem::hw::Region* r = rt ? rt->hw.load(std::memory_order_acquire) : nullptr;
  return r ? r->usable_size(ptr) : 0;
}

int farmem_owns(const void* ptr) {
  farmem::detail::Runtime* rt = farmem::detail::g_runtime_ptr.load(std::memory_order_acquire);
  farmem::hw::Region* r = rt ? rt->hw.load(std::memory_order_acquire) : nullptr;
  return r && r->contains(ptr);
}

size_t farmem_stats_json(char* buf, size_t len) {
  std::string s = farmem::stats_json();
  if (len) {
    std::size_t n = std::min(len - 1, s.size());
    std::memcpy(buf, s.data(), n);
    buf[n] = 0;
  }
  return s.size();
}

}  // extern "C"
