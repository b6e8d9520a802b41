// A far-memory pool against real farmem-server processes on loopback: every
// page written is read back exact (against a shadow copy) while a server is
// killed, or stopped for longer than the timeout, and the pool restores its
// redundancy by itself; losing more servers than the redundancy covers ends
// the program with one line and exit status 1. One scenario per process (the
// runtime starts once): meson runs each by its tag. Sizes shrink under sanitizers.
#include <catch2/catch.hpp>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "far/test_support.hpp"
#include "farmem/far.hpp"

using namespace farmem;

namespace {

struct Server {
  pid_t pid = -1;
  std::string uri;
};

// Set: servers listen on tcp+tls:// with the certificate and key in this directory.
std::string g_tls_dir;

// Starts farmem-server (FARMEM_SERVER, set by meson) on a loopback port (0: a free one).
Server start_server(const std::string& port = "0") {
  const char* path = std::getenv("FARMEM_SERVER");
  REQUIRE(path != nullptr);
  int out[2];
  REQUIRE(pipe(out) == 0);
  Server s;
  s.pid = fork();
  REQUIRE(s.pid >= 0);
  if (s.pid == 0) {
    dup2(out[1], 1);
    close(out[0]);
    const std::string listen = (g_tls_dir.empty() ? "tcp://127.0.0.1:" : "tcp+tls://127.0.0.1:") + port;
    if (g_tls_dir.empty()) {
      execl(path, path, "--listen", listen.c_str(), "--capacity", "8G", static_cast<char*>(nullptr));
    } else {
      const std::string cert = g_tls_dir + "/cert.pem", key = g_tls_dir + "/key.pem";
      execl(path, path, "--listen", listen.c_str(), "--capacity", "8G", "--tls-cert", cert.c_str(), "--tls-key",
            key.c_str(), static_cast<char*>(nullptr));
    }
    _exit(127);
  }
  close(out[1]);
  std::string text;
  char buf[256];
  while (text.find('\n') == std::string::npos) {
    ssize_t n = read(out[0], buf, sizeof buf);
    REQUIRE(n > 0);
    text.append(buf, static_cast<std::size_t>(n));
  }
  close(out[0]);
  const std::size_t at = text.find(g_tls_dir.empty() ? "tcp://" : "tcp+tls://");
  REQUIRE(at != std::string::npos);
  s.uri = text.substr(at, text.find(',', at) - at);
  return s;
}

struct Servers {
  std::vector<Server> all;
  explicit Servers(unsigned n) {
    for (unsigned i = 0; i < n; ++i) all.push_back(start_server());
  }
  ~Servers() {
    for (Server& s : all) {
      kill(s.pid, SIGCONT);
      kill(s.pid, SIGKILL);
      waitpid(s.pid, nullptr, 0);
    }
  }
  std::string backend() const {
    std::string b;
    for (const Server& s : all) b += (b.empty() ? "" : ",") + s.uri;
    return b;
  }
};

bool stats_say(const std::string& what) { return stats_json().find(what) != std::string::npos; }

// The values the workload writes: all 64 bits, or (for the compressed pool)
// 24 of them, so that pages shrink.
std::uint64_t g_value_mask = ~std::uint64_t{0};
std::uint64_t value(std::uint64_t i, std::uint64_t v) { return test::mix(i, v) & g_value_mask; }

// Writes versions of random words of a far array at 10% local memory, with a
// shadow copy; `event` runs once, a third of the way; then checks every word.
// Returns the number of wrong words.
// *final_stats: the statistics line once redundancy is back.
std::uint64_t run_workload(const std::string& backend, const std::string& redundancy, unsigned timeout_ms,
                           const std::function<void(int)>& event, const std::string& expect = "",
                           std::string* final_stats = nullptr) {
  // Small: the multi-GiB cases are in test/cli/pool_test.sh.
  const std::uint64_t bytes = test::test_bytes(128ull << 20, 32ull << 20);
  const std::uint64_t ops = test::kSanitized ? 60000 : 200000;
  Config cfg = Config::from_env();
  cfg.backend = backend;
  cfg.redundancy = redundancy;
  cfg.server_timeout_ms = timeout_ms;
  cfg.local_mem_bytes = std::max<std::uint64_t>(bytes / 10, 8ull << 20);
  cfg.far_mem_bytes = 2 * bytes;
  init(cfg);
  std::uint64_t bad = 0;
  {
    FarArray<std::uint64_t> a(bytes / 8);
    std::vector<std::uint32_t> version(a.size(), 0);
    for (std::uint64_t i = 0; i < a.size(); ++i) a.store(i, value(i, 0));
    test::Rng rng(7);
    for (std::uint64_t k = 0; k < ops; ++k) {
      if (k % (ops / 6) == 0 && k > 0) event(static_cast<int>(k / (ops / 6)));  // sixths 1-5
      const std::uint64_t i = rng.next() % a.size();
      if (a.load(i) != value(i, version[i])) ++bad;
      a.store(i, value(i, ++version[i]));
    }
    for (std::uint64_t i = 0; i < a.size(); ++i) bad += a.load(i) != value(i, version[i]);
    // Once the pool says its redundancy is back, every page reads right again
    // (now partly from the rebuilt pieces).
    for (int t = 0; t < 600 && !(stats_say("\"redundancy_restored\":true") && (expect.empty() || stats_say(expect)));
         ++t)
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    INFO(stats_json());
    // At least the server the scenario took away is down (on a loaded machine a
    // slow one may be taken for lost too: that is survivable, and not a failure here).
    if (expect.empty()) CHECK_FALSE(stats_say("\"servers_down\":0,"));
    else CHECK(stats_say(expect));
    CHECK(stats_say("\"redundancy_restored\":true"));
    CHECK_FALSE(stats_say("\"pages_repaired\":0,"));
    for (std::uint64_t i = 0; i < a.size(); ++i) bad += a.load(i) != value(i, version[i]);
    if (final_stats) *final_stats = stats_json();
  }
  shutdown();
  return bad;
}

}  // namespace

std::uint64_t stat(const std::string& json, const std::string& name) {
  const std::size_t at = json.find("\"" + name + "\":");
  return at == std::string::npos ? 0 : std::stoull(json.substr(at + name.size() + 3));
}

// Each live server's `layer` object ("compress", "protect") under the pool's
// "members" in the statistics st; fails the test when there is no "members".
std::vector<std::string> member_layers(const std::string& st, const std::string& layer) {
  const std::size_t members = st.find("\"members\":[");
  REQUIRE(members != std::string::npos);
  std::vector<std::string> out;
  const std::string key = "\"" + layer + "\":{";
  for (std::size_t at = st.find(key, members); at != std::string::npos; at = st.find(key, at + 1))
    out.push_back(st.substr(at, st.find('}', at) - at));
  return out;
}

TEST_CASE("ec:2+1 over 4 servers: one killed mid-run, nothing lost, redundancy restored at the rate asked",
          "[ec_kill]") {
  Servers s(4);
  constexpr std::uint64_t kRate = 16ull << 20;  // slow enough to measure, fast enough for a test
  setenv("FARMEM_REPAIR_RATE", "16M", 1);
  std::string st;
  const std::uint64_t bad = run_workload(s.backend(), "ec:2+1", 0, [&](int sixth) {
    if (sixth == 2) kill(s.all[1].pid, SIGKILL);
  }, "", &st);
  unsetenv("FARMEM_REPAIR_RATE");
  CHECK(bad == 0);
  INFO(st);
  // The rebuild took at least as long as its pages at 16 MiB/s (less one batch of slack).
  const std::uint64_t pages = stat(st, "pages_repaired");
  CHECK(pages > 64);
  CHECK(stat(st, "repair_ms") * kRate / 1000 >= (pages - 64) * 4096);
}

TEST_CASE("ec:2+1 over 4 servers with lz4 and aead: each server's pieces compressed and sealed, one killed "
          "mid-run, nothing lost", "[ec_compress]") {
  Servers s(4);
  setenv("FARMEM_COMPRESS", "lz4", 1);
  setenv("FARMEM_PROTECT", "aead", 1);
  if (!test::kSanitized) setenv("FARMEM_TEST_BYTES", "48M", 0);  // the long cases are the others
  g_value_mask = 0xffffff;
  std::string st;
  const std::uint64_t bad = run_workload(s.backend(), "ec:2+1", 0, [&](int sixth) {
    if (sixth == 2) kill(s.all[3].pid, SIGKILL);
  }, "", &st);
  g_value_mask = ~std::uint64_t{0};
  unsetenv("FARMEM_COMPRESS");
  unsetenv("FARMEM_PROTECT");
  CHECK(bad == 0);
  INFO(st);
  CHECK(stat(st, "pages_repaired") > 0);
  // Every live server stores its 2 KiB pieces in less room than they take.
  const std::vector<std::string> compressed = member_layers(st, "compress");
  for (const std::string& one : compressed) {
    CHECK(stat(one, "data_bytes") * 4 > 5 * stat(one, "stored_bytes"));  // at least 20% saved
    CHECK(stat(one, "damaged") == 0);
  }
  CHECK(compressed.size() == 3);
}

TEST_CASE("ec:2+1 over 4 tcp+tls:// servers: one killed mid-run, nothing lost", "[tls]") {
  char dir[] = "/tmp/farmem-pool-tls-XXXXXX";
  REQUIRE(mkdtemp(dir) != nullptr);
  g_tls_dir = dir;
  const std::string make_cert = "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 "
                                "-subj /CN=farmem-test -addext subjectAltName=IP:127.0.0.1 -keyout " +
                                g_tls_dir + "/key.pem -out " + g_tls_dir + "/cert.pem 2>/dev/null";
  REQUIRE(std::system(make_cert.c_str()) == 0);
  setenv("FARMEM_TLS_CA", (g_tls_dir + "/cert.pem").c_str(), 1);
  {
    Servers s(4);
    const std::uint64_t bad = run_workload(s.backend(), "ec:2+1", 0, [&](int sixth) {
      if (sixth == 2) kill(s.all[2].pid, SIGKILL);
    });
    CHECK(bad == 0);
  }
  unsetenv("FARMEM_TLS_CA");
  std::system(("rm -rf " + g_tls_dir).c_str());
  g_tls_dir.clear();
}

TEST_CASE("replicas:2 over 3 servers, sealed (aead): one stopped longer than the timeout, nothing lost, "
          "redundancy restored", "[replicas_stop]") {
  Servers s(3);
  setenv("FARMEM_PROTECT", "aead", 1);
  std::string st;
  const std::uint64_t bad = run_workload(s.backend(), "replicas:2", 1000, [&](int sixth) {
    if (sixth == 2) kill(s.all[2].pid, SIGSTOP);
  }, "", &st);
  unsetenv("FARMEM_PROTECT");
  CHECK(bad == 0);
  INFO(st);
  // Each live server's pages went out sealed, and none failed its check.
  const std::vector<std::string> sealed = member_layers(st, "protect");
  for (const std::string& one : sealed) {
    CHECK(stat(one, "writes") > 0);
    CHECK(stat(one, "failed_checks") == 0);
  }
  CHECK(sealed.size() >= 2);
}

TEST_CASE("ec:2+1 over 3 servers: losing two ends the program with one line and exit status 1", "[lost]") {
  Servers s(3);
  int err[2];
  REQUIRE(pipe(err) == 0);
  const pid_t child = fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    dup2(err[1], 2);
    close(err[0]);
    run_workload(s.backend(), "ec:2+1", 500, [&](int sixth) {
      if (sixth != 2) return;
      kill(s.all[0].pid, SIGKILL);
      kill(s.all[2].pid, SIGKILL);
    });
    _exit(0);  // not reached: the pool must stop the program
  }
  close(err[1]);
  std::string text;
  char buf[512];
  for (ssize_t n; (n = read(err[0], buf, sizeof buf)) > 0;) text.append(buf, static_cast<std::size_t>(n));
  close(err[0]);
  int status = 0;
  waitpid(child, &status, 0);
  INFO(text);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 1);
  CHECK(text.find("far memory lost: memory servers ") != std::string::npos);
  CHECK(text.find(s.all[0].uri) != std::string::npos);
  CHECK(text.find(s.all[2].uri) != std::string::npos);
}

TEST_CASE("a pool file: a server joins, one retires and its pieces move, one comes back as new", "[membership]") {
  Servers s(4);
  char path[] = "/tmp/farmem-pool-XXXXXX";
  const int fd = mkstemp(path);
  REQUIRE(fd >= 0);
  close(fd);
  auto write_pool = [&](const std::vector<std::string>& uris) {  // replaced whole, as an operator's editor would
    const std::string tmp = std::string(path) + ".new";
    FILE* f = std::fopen(tmp.c_str(), "w");
    std::fprintf(f, "# farmem pool\n");
    for (const std::string& u : uris) std::fprintf(f, "%s\n", u.c_str());
    std::fclose(f);
    REQUIRE(std::rename(tmp.c_str(), path) == 0);
  };
  const auto& a = s.all;
  write_pool({a[0].uri, a[1].uri, a[2].uri});
  const std::string port2 = a[2].uri.substr(a[2].uri.rfind(':') + 1);
  auto wait_for = [&](const std::string& what) {
    for (int t = 0; t < 300 && !stats_say(what); ++t) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    INFO(stats_json());
    CHECK(stats_say(what));
  };
  const std::uint64_t bad = run_workload(
      std::string("@") + path, "replicas:2", 2000,
      [&](int sixth) {
        if (sixth == 1) {  // a fourth server joins
          write_pool({a[0].uri, a[1].uri, a[2].uri, a[3].uri});
          wait_for("\"servers_joined\":1");
        } else if (sixth == 2) {  // the first leaves: its pieces move before it goes
          write_pool({a[1].uri, a[2].uri, a[3].uri});
          wait_for("\"servers_retired\":1");
          kill(a[0].pid, SIGKILL);  // gone for real: nothing may need it now
        } else if (sixth == 3) {  // the third dies and comes back empty on its port
          kill(a[2].pid, SIGKILL);
          waitpid(a[2].pid, nullptr, 0);
          s.all[2] = start_server(port2);
        } else if (sixth == 5) {
          wait_for("\"servers_joined\":2");
        }
      },
      "\"servers_up\":3");
  CHECK(bad == 0);
  unlink(path);
}
