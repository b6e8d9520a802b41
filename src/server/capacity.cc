// The capacity account and its sessions (capacity.hpp).
#include "server/capacity.hpp"

#include <algorithm>

namespace farmem::server {

bool CapacityAccount::grant(std::uint64_t bytes, ClientUsage& to) {
  std::lock_guard<std::mutex> g(mu_);
  if (bytes > capacity_ - used_.granted) return false;
  used_.granted += bytes;
  to.granted.fetch_add(bytes, std::memory_order_relaxed);
  return true;
}

void CapacityAccount::give_back(std::uint64_t bytes, ClientUsage& from) {
  std::lock_guard<std::mutex> g(mu_);
  used_.granted -= bytes;
  from.granted.fetch_sub(bytes, std::memory_order_relaxed);
}

void CapacityAccount::session_opened(const std::shared_ptr<ClientUsage>& c) {
  std::lock_guard<std::mutex> g(mu_);
  ++used_.sessions;
  c->session = next_session_++;
  clients_.push_back(c);
}

void CapacityAccount::session_closed(const std::shared_ptr<ClientUsage>& c) {
  std::lock_guard<std::mutex> g(mu_);
  --used_.sessions;
  clients_.erase(std::remove(clients_.begin(), clients_.end(), c), clients_.end());
}

std::vector<std::shared_ptr<ClientUsage>> CapacityAccount::clients() const {
  std::lock_guard<std::mutex> g(mu_);
  return clients_;
}

CapacityAccount::Usage CapacityAccount::usage() const {
  std::lock_guard<std::mutex> g(mu_);
  return used_;
}

std::string CapacityAccount::describe() const {
  Usage u = usage();
  return std::to_string(u.granted >> 20) + " MiB of " + std::to_string(capacity_ >> 20) + " MiB are in use by " +
         std::to_string(u.sessions) + (u.sessions == 1 ? " session" : " sessions");
}

}  // namespace farmem::server
