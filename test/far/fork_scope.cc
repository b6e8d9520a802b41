// fork() and open far-memory scopes (run by test/cli/cli_test.sh):
//   inside  fork() from inside a scope while the evictor is busy: the forking
//           thread acknowledges the eviction in flight itself, so fork()
//           returns; parent and child both read what was written.
//   held    another thread sleeps inside a scope while this one forks: the
//           eviction in flight can never be acknowledged, so fork() ends the
//           program with one line after its limit instead of hanging.
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <thread>

#include "farmem/far.hpp"

namespace {
using Array = farmem::FarArray<std::uint64_t>;
constexpr std::size_t kWordsPerPage = 512;

void fill(Array& a, std::uint64_t round) {
  for (std::size_t i = 0; i < a.size(); i += kWordsPerPage) a.store(i, i * 7 + round);
}

int inside(Array& a) {
  for (std::uint64_t round = 0; round < 10; ++round) {
    fill(a, round);  // far more pages than frames: the evictor has batches in flight
    farmem::Scope s;
    std::uint64_t seen = 0;
    for (std::size_t i = 0; i < a.size(); i += kWordsPerPage * 41) seen += a.get(s, i) == i * 7 + round;
    const std::uint64_t& held = a.get(s, kWordsPerPage * 3);  // pinned: the child reads its copy
    const pid_t child = fork();
    if (child < 0) return std::perror("fork"), 1;
    if (child == 0) _exit(held == kWordsPerPage * 3 * 7 + round ? 0 : 3);
    int status = 0;
    waitpid(child, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      std::fprintf(stderr, "round %llu: child status %d\n", static_cast<unsigned long long>(round), status);
      return 1;
    }
    if (seen != (a.size() + kWordsPerPage * 41 - 1) / (kWordsPerPage * 41)) {
      std::fprintf(stderr, "round %llu: wrong values in the parent\n", static_cast<unsigned long long>(round));
      return 1;
    }
  }
  for (std::size_t i = 0; i < a.size(); i += kWordsPerPage)
    if (a.load(i) != i * 7 + 9) return std::fprintf(stderr, "word %zu lost\n", i), 1;
  std::puts("fork inside a scope: 10 rounds, parent and children read what was written");
  return 0;
}

int held(Array& a) {
  fill(a, 0);
  std::thread sleeper([&] {
    farmem::Scope s;
    (void)a.get(s, 0);
    sleep(120);  // never reaches a scheduling point
  });
  sleep(1);
  // 96 new pages, more than the slack above the evictor's high watermark (at
  // most a batch, 64) and fewer than it holds free: the evictor must start a
  // batch, and that batch waits for the sleeper's acknowledgement.
  for (std::size_t i = 0; i < 96 * kWordsPerPage; i += kWordsPerPage) a.store(i, 1);
  usleep(100000);
  const pid_t child = fork();
  if (child == 0) _exit(0);
  std::fprintf(stderr, "fork returned while another thread held a scope\n");
  sleeper.detach();
  return 1;
}
}  // namespace

int main(int argc, char** argv) {
  if (argc != 2 || (std::strcmp(argv[1], "inside") != 0 && std::strcmp(argv[1], "held") != 0)) {
    std::fprintf(stderr, "usage: fork_scope inside|held\n");
    return 2;
  }
  farmem::Config cfg = farmem::Config::from_env();
  cfg.local_mem_bytes = 8ull << 20;
  farmem::init(cfg);
  Array a((128ull << 20) / 8);
  return std::strcmp(argv[1], "inside") == 0 ? inside(a) : held(a);
}
