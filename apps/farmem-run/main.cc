// farmem-run: runs an unmodified, dynamically linked program with its heap in
// far memory. It checks the options (and that the memory server answers), puts
// libfarmem-preload.so in LD_PRELOAD and the FARMEM_* settings in the
// environment, and execs the program. The program's runtime starts the
// embedded memory server, or connects to --backend, when its first page goes far.
#include <limits.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <tuple>
#include <vector>

#include "farmem/runtime.hpp"
#include "farmem_build_config.h"

namespace {

void usage(FILE* out) {
  std::fprintf(out,
               "usage: farmem-run [--local-mem SIZE|PCT%%] [--backend URI] [--compress CODEC] [--protect aead] [--stats] -- PROGRAM [ARGS...]\n"
               "  Runs PROGRAM with its heap (malloc and large anonymous mmaps) in far memory;\n"
               "  only --local-mem of it stays in local memory (default 25%% of this machine).\n"
               "  --backend  shm (default: a memory server on this machine), tcp://HOST:PORT,\n"
               "             tcp+tls://HOST:PORT (TLS; the server's CA in FARMEM_TLS_CA),\n"
               "             file:///PATH (an SSD tier: a file made in directory PATH, or a block device),\n"
               "             or several such URIs separated by commas: a pool (FARMEM_REDUNDANCY: replicas:N, ec:K+M)\n"
               "  --compress far pages compressed: none (default), lz4, zstd or zstd:LEVEL (FARMEM_COMPRESS);\n"
               "             with the default shm backend, far memory then really saves memory on this machine\n"
               "  --protect  far pages encrypted and checked (AES-256-GCM, a key that never leaves the process):\n"
               "             none (default) or aead (FARMEM_PROTECT)\n"
               "  --stats    the program prints one JSON line of statistics at exit, and a line with\n"
               "             its peak resident memory (so does any child that sent pages far)\n"
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

// FARMEM_PRELOAD, then the installed tree this binary is in (wherever it was
// copied), then the build tree, then the install prefix.
std::string find_preload() {
  if (const char* p = getenv("FARMEM_PRELOAD")) {
    if (!is_file(p)) die(std::string("FARMEM_PRELOAD=") + p + " is not a readable file; point it at libfarmem-preload.so");
    return p;
  }
  const std::string here = dir_of_self();
  for (const std::string& c : {here + "/" FARMEM_BIN_TO_LIB "/libfarmem-preload.so",
                               here + "/../../src/libfarmem-preload.so", std::string(FARMEM_BUILD_PRELOAD_PATH),
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
  std::string local_mem, backend, compress, protect;
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
    else if (a == "--compress" || a.rfind("--compress=", 0) == 0) compress = value("--compress");
    else if (a == "--protect" || a.rfind("--protect=", 0) == 0) protect = value("--protect");
    else if (!a.empty() && a[0] == '-') die("unknown option " + a + "; see --help");
    else break;  // the program (without "--")
  }
  if (i >= argc) die("no program to run; usage: farmem-run [options] -- PROGRAM [ARGS...]");

  if (stats) setenv("FARMEM_STATS", "1", 1);
  if (!local_mem.empty()) unsetenv("FARMEM_LOCAL_MEM");  // the option wins; set again below
  if (getenv("FARMEM_SERVER") == nullptr) {
    std::string server = find_server();
    if (!server.empty()) setenv("FARMEM_SERVER", server.c_str(), 1);
  }
  // Check the whole configuration here, so a bad value is our one-line error,
  // naming the option the user typed.
  farmem::Config cfg;
  try {
    cfg = farmem::Config::from_env();
    if (!local_mem.empty()) {
      cfg.local_mem_bytes = farmem::parse_local_mem(local_mem, "--local-mem");
      cfg.local_mem_from = "--local-mem";
    }
    if (!backend.empty()) cfg.backend = backend;
    if (!compress.empty()) cfg.compress = compress;
    if (!protect.empty()) cfg.protect = protect;
    farmem::check_config(cfg);
    if (cfg.hw_faults == "signal")
      throw farmem::Error("FARMEM_HW_FAULTS=signal cannot serve an unmodified program (its system calls on far "
                          "pages would fail with EFAULT); unset it: farmem-run uses the handler thread");
    farmem::check_backend(cfg);  // the program connects only when a page goes far: ask now
  } catch (const farmem::Error& e) {
    std::string msg = e.what();
    // Name the option, not the variable we would have set.
    for (auto [var, opt, given] : {std::tuple<std::string, std::string, bool>{"FARMEM_BACKEND=", "--backend ", !backend.empty()},
                                   {"FARMEM_BACKEND", "--backend", !backend.empty()},
                                   {"FARMEM_COMPRESS=", "--compress ", !compress.empty()},
                                   {"FARMEM_COMPRESS", "--compress", !compress.empty()},
                                   {"FARMEM_PROTECT=", "--protect ", !protect.empty()},
                                   {"FARMEM_PROTECT", "--protect", !protect.empty()}})
      if (given)
        for (std::size_t at; (at = msg.find(var)) != std::string::npos;) msg.replace(at, var.size(), opt);
    die(msg);
  }
  if (!local_mem.empty()) setenv("FARMEM_LOCAL_MEM", std::to_string(cfg.local_mem_bytes).c_str(), 1);
  if (!backend.empty()) setenv("FARMEM_BACKEND", backend.c_str(), 1);
  if (!compress.empty()) setenv("FARMEM_COMPRESS", compress.c_str(), 1);
  if (!protect.empty()) setenv("FARMEM_PROTECT", protect.c_str(), 1);
  std::string preload = find_preload();
  if (const char* old = getenv("LD_PRELOAD"); old && *old) preload += std::string(":") + old;
  setenv("LD_PRELOAD", preload.c_str(), 1);

  // The program takes our place (same pid): signals, job control, `timeout`
  // and exit statuses reach it and come from it as without farmem. The runtime
  // in it prints the statistics, and the peak-resident line, at exit.
  setenv("FARMEM_RUN_PID", std::to_string(getpid()).c_str(), 1);
  execvp(argv[i], argv + i);
  std::fprintf(stderr, "farmem-run: cannot run %s: %s\n", argv[i], std::strerror(errno));
  return 127;
}
