#include "server/capacity.hpp"

namespace farmem::server {

bool CapacityAccount::grant(std::uint64_t bytes) {
  std::lock_guard<std::mutex> g(mu_);
  if (bytes > capacity_ - used_.granted) return false;
  used_.granted += bytes;
  return true;
}

void CapacityAccount::give_back(std::uint64_t bytes) {
  std::lock_guard<std::mutex> g(mu_);
  used_.granted -= bytes;
}

void CapacityAccount::session_opened() {
  std::lock_guard<std::mutex> g(mu_);
  ++used_.sessions;
}

void CapacityAccount::session_closed() {
  std::lock_guard<std::mutex> g(mu_);
  --used_.sessions;
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
