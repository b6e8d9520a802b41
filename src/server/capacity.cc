#include "server/capacity.hpp"

namespace farmem::server {

bool CapacityAccount::reserve(std::uint64_t bytes, std::string* refusal) {
  std::lock_guard<std::mutex> g(mu_);
  const std::uint64_t free = capacity_ - used_.reserved;
  if (bytes == 0 || bytes > free) {
    *refusal = "the server has " + std::to_string(free >> 20) + " MiB free of " + std::to_string(capacity_ >> 20) +
               " MiB; ask for less (FARMEM_FAR_MEM)";
    return false;
  }
  used_.reserved += bytes;
  ++used_.sessions;
  return true;
}

void CapacityAccount::release(std::uint64_t bytes) {
  std::lock_guard<std::mutex> g(mu_);
  used_.reserved -= bytes;
  --used_.sessions;
}

CapacityAccount::Usage CapacityAccount::usage() const {
  std::lock_guard<std::mutex> g(mu_);
  return used_;
}

}  // namespace farmem::server
