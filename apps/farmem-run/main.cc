// farmem-run: runs an unmodified, dynamically linked program with its heap in
// far memory. It checks the options, puts libfarmem-preload.so in LD_PRELOAD
// and the FARMEM_* settings in the environment, runs the program and passes its
// exit status through. The program's runtime starts the embedded memory server
// itself unless --backend names another.
#include <limits.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "farmem/runtime.hpp"
#include "farmem_build_config.h"

namespace {

void usage(FILE* out) {
  std::fprintf(out,
               "usage: farmem-run [--local-mem SIZE|PCT%%] [--backend URI] [--stats] -- PROGRAM [ARGS...]\n"
               "  Runs PROGRAM with its heap (malloc and large anonymous mmaps) in far memory;\n"
               "  only --local-mem of it stays in local memory (default 25%% of this machine).\n"
               "  --backend  shm (default: a memory server on this machine) or tcp://HOST:PORT\n"
               "  --stats    the runtime prints one JSON line of statistics at exit, and farmem-run\n"
               "             a summary line with the program's peak resident memory\n"
               "  Other settings come from FARMEM_* variables (docs/configuration.md).\n");
}

[[noreturn]] void die(const std::string& msg) {
  std::fprintf(stderr, "farmem-run: %s\n", msg.c_str());
  std::exit(2);
}

bool is_file(const std::string& p) { return !p.empty() && access(p.c_str(), R_OK) == 0; }
bool is_exe(const std::string& p) { return !p.empty() && access(p.c_str(), X_OK) == 0; }

std::string dir_of_self() {
  char buf[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) return ".";
  buf[n] = 0;
  std::string s(buf);
  return s.substr(0, s.rfind('/'));
}

// FARMEM_PRELOAD, then the build tree, then the install prefix.
std::string find_preload() {
  if (const char* p = getenv("FARMEM_PRELOAD")) {
    if (!is_file(p)) die(std::string("FARMEM_PRELOAD=") + p + " is not a readable file; point it at libfarmem-preload.so");
    return p;
  }
  const std::string here = dir_of_self();
  for (const std::string& c : {here + "/../../src/libfarmem-preload.so", std::string(FARMEM_BUILD_PRELOAD_PATH),
                               std::string(FARMEM_LIBDIR) + "/libfarmem-preload.so"})
    if (is_file(c)) {
      char real[PATH_MAX];
      return realpath(c.c_str(), real) ? std::string(real) : c;
    }
  die("libfarmem-preload.so not found; build with -Dshim=enabled (needs libmimalloc-dev) or set FARMEM_PRELOAD");
}

std::string find_server() {
  const std::string here = dir_of_self();
  for (const std::string& c : {here + "/farmem-server", here + "/../farmem-server/farmem-server",
                               std::string(FARMEM_BINDIR) + "/farmem-server"})
    if (is_exe(c)) {
      char real[PATH_MAX];
      return realpath(c.c_str(), real) ? std::string(real) : c;
    }
  return {};  // the runtime searches PATH
}

}  // namespace

int main(int argc, char** argv) {
  std::string local_mem, backend;
  bool stats = false;
  int i = 1;
  for (; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--") {
      ++i;
      break;
    }
    if (a == "--help" || a == "-h") {
      usage(stdout);
      return 0;
    }
    if (a == "--stats") {
      stats = true;
      continue;
    }
    auto value = [&](const std::string& name) -> std::string {
      if (a.rfind(name + "=", 0) == 0) return a.substr(name.size() + 1);
      if (i + 1 >= argc) die(name + " needs a value; see --help");
      return argv[++i];
    };
    if (a == "--local-mem" || a.rfind("--local-mem=", 0) == 0) local_mem = value("--local-mem");
    else if (a == "--backend" || a.rfind("--backend=", 0) == 0) backend = value("--backend");
    else if (!a.empty() && a[0] == '-') die("unknown option " + a + "; see --help");
    else break;  // the program (without "--")
  }
  if (i >= argc) die("no program to run; usage: farmem-run [options] -- PROGRAM [ARGS...]");

  if (!local_mem.empty()) setenv("FARMEM_LOCAL_MEM", local_mem.c_str(), 1);
  if (!backend.empty()) setenv("FARMEM_BACKEND", backend.c_str(), 1);
  if (stats) setenv("FARMEM_STATS", "1", 1);
  // Check the whole configuration here, so a bad value is our one-line error.
  farmem::Config cfg;
  try {
    cfg = farmem::Config::from_env();
    farmem::check_config(cfg);
    if (cfg.hw_faults == "signal")
      throw farmem::Error("FARMEM_HW_FAULTS=signal cannot serve an unmodified program (its system calls on far "
                          "pages would fail with EFAULT); unset it: farmem-run uses the handler thread");
  } catch (const farmem::Error& e) {
    die(e.what());
  }
  if (getenv("FARMEM_SERVER") == nullptr) {
    std::string server = find_server();
    if (!server.empty()) setenv("FARMEM_SERVER", server.c_str(), 1);
  }
  std::string preload = find_preload();
  if (const char* old = getenv("LD_PRELOAD"); old && *old) preload += std::string(":") + old;
  setenv("LD_PRELOAD", preload.c_str(), 1);

  pid_t pid = fork();
  if (pid < 0) die(std::string("fork: ") + std::strerror(errno));
  if (pid == 0) {
    execvp(argv[i], argv + i);
    std::fprintf(stderr, "farmem-run: cannot run %s: %s\n", argv[i], std::strerror(errno));
    _exit(127);
  }
  // The program owns the terminal's signals; we only wait for it.
  signal(SIGINT, SIG_IGN);
  signal(SIGQUIT, SIG_IGN);
  int status = 0;
  rusage ru{};
  while (wait4(pid, &status, 0, &ru) < 0) {
    if (errno != EINTR) die(std::string("wait4: ") + std::strerror(errno));
  }
  if (stats)
    std::fprintf(stderr, "farmem-run: %s %d, peak resident %ld MiB, local memory budget %llu MiB\n",
                 WIFSIGNALED(status) ? "signal" : "exit", WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status),
                 ru.ru_maxrss >> 10, static_cast<unsigned long long>(cfg.local_mem_bytes >> 20));
  if (WIFSIGNALED(status)) {
    signal(WTERMSIG(status), SIG_DFL);
    raise(WTERMSIG(status));
    return 128 + WTERMSIG(status);
  }
  return WEXITSTATUS(status);
}
