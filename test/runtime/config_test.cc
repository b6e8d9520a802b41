// Sizes, percentages and FARMEM_* parsing: every bad value is a one-line Error.
#include <catch2/catch.hpp>
#include <cstdlib>

#include "farmem/runtime.hpp"

using farmem::Config;
using farmem::Error;
using farmem::parse_size;
using farmem::parse_size_or_percent;

TEST_CASE("sizes parse with binary suffixes") {
  CHECK(parse_size("4096", "x") == 4096);
  CHECK(parse_size("4K", "x") == 4096);
  CHECK(parse_size("512M", "x") == 512ull << 20);
  CHECK(parse_size("2G", "x") == 2ull << 30);
  CHECK(parse_size("2GiB", "x") == 2ull << 30);
  CHECK(parse_size(" 1.5g ", "x") == 3ull << 29);
  CHECK(parse_size("1T", "x") == 1ull << 40);
}

TEST_CASE("bad sizes name the variable and the fix") {
  for (const char* bad : {"", "abc", "12Q", "-5M", "1e400", "G", "5 M B"}) {
    INFO(bad);
    try {
      parse_size(bad, "FARMEM_LOCAL_MEM");
      FAIL("accepted");
    } catch (const Error& e) {
      std::string m = e.what();
      CHECK(m.find("FARMEM_LOCAL_MEM") != std::string::npos);
      CHECK(m.find("512M") != std::string::npos);
      CHECK(m.find('\n') == std::string::npos);
    }
  }
}

TEST_CASE("percentages are of the given whole") {
  CHECK(parse_size_or_percent("25%", 1000, "x") == 250);
  CHECK(parse_size_or_percent("100%", 1000, "x") == 1000);
  CHECK(parse_size_or_percent("1M", 1000, "x") == 1ull << 20);
  CHECK_THROWS_AS(parse_size_or_percent("0%", 1000, "x"), Error);
  CHECK_THROWS_AS(parse_size_or_percent("101%", 1000, "x"), Error);
  CHECK_THROWS_AS(parse_size_or_percent("x%", 1000, "x"), Error);
}

TEST_CASE("the environment is read and validated") {
  setenv("FARMEM_LOCAL_MEM", "64M", 1);
  setenv("FARMEM_SHM_DELAY_NS", "5000", 1);
  setenv("FARMEM_STATS", "1", 1);
  Config c = Config::from_env();
  CHECK(c.local_mem_bytes == 64ull << 20);
  CHECK(c.shm_delay_ns == 5000);
  CHECK(c.stats_at_exit);
  CHECK(c.backend == "shm");

  setenv("FARMEM_LOCAL_MEM", "10%", 1);
  CHECK(Config::from_env().local_mem_bytes == farmem::physical_memory_bytes() / 10);
  setenv("FARMEM_LOCAL_MEM", "0", 1);  // not "the default": a budget of nothing is a mistake
  CHECK_THROWS_WITH(Config::from_env(), Catch::Contains("FARMEM_LOCAL_MEM='0' is no budget"));
  CHECK_THROWS_WITH(farmem::parse_local_mem("0K", "--local-mem"), Catch::Contains("--local-mem='0K'"));
  setenv("FARMEM_LOCAL_MEM", "64M", 1);

  setenv("FARMEM_SHM_DELAY_NS", "-3", 1);
  CHECK_THROWS_AS(Config::from_env(), Error);
  setenv("FARMEM_SHM_DELAY_NS", "0", 1);
  setenv("FARMEM_STATS", "maybe", 1);
  CHECK_THROWS_AS(Config::from_env(), Error);
  setenv("FARMEM_STATS", "0", 1);
  setenv("FARMEM_EVICTOR_CPU", "4096", 1);
  CHECK_THROWS_AS(Config::from_env(), Error);
  unsetenv("FARMEM_EVICTOR_CPU");
  setenv("FARMEM_EVICT_BATCH", "0", 1);
  CHECK_THROWS_AS(Config::from_env(), Error);
  unsetenv("FARMEM_EVICT_BATCH");
  setenv("FARMEM_HW_FAULTS", "sigbus", 1);
  CHECK_THROWS_WITH(Config::from_env(), Catch::Contains("not thread or signal"));
  setenv("FARMEM_HW_FAULTS", " Signal ", 1);
  CHECK(Config::from_env().hw_faults == "signal");
  unsetenv("FARMEM_HW_FAULTS");
  setenv("FARMEM_HW_DIRTY", "some", 1);
  CHECK_THROWS_WITH(Config::from_env(), Catch::Contains("not track or all"));
  setenv("FARMEM_HW_DIRTY", "track", 1);
  CHECK(Config::from_env().hw_dirty == "track");
  CHECK(Config::from_env().hw_first_touch == "kernel");
  setenv("FARMEM_HW_FIRST_TOUCH", "later", 1);
  CHECK_THROWS_WITH(Config::from_env(), Catch::Contains("not kernel or runtime"));
  setenv("FARMEM_HW_FIRST_TOUCH", "Runtime", 1);
  CHECK(Config::from_env().hw_first_touch == "runtime");
  unsetenv("FARMEM_HW_FIRST_TOUCH");
  CHECK(Config::from_env().redundancy == "none");
  setenv("FARMEM_REDUNDANCY", "raid6", 1);
  CHECK_THROWS_WITH(Config::from_env(), Catch::Contains("not none, replicas:N or ec:K+M"));
  setenv("FARMEM_REDUNDANCY", " EC:4+2 ", 1);
  CHECK(Config::from_env().redundancy == "ec:4+2");
  unsetenv("FARMEM_REDUNDANCY");
  CHECK(Config::from_env().server_timeout_ms == 0);
  setenv("FARMEM_SERVER_TIMEOUT", "2s", 1);
  CHECK(Config::from_env().server_timeout_ms == 2000);
  setenv("FARMEM_SERVER_TIMEOUT", "750ms", 1);
  CHECK(Config::from_env().server_timeout_ms == 750);
  setenv("FARMEM_SERVER_TIMEOUT", "0", 1);
  CHECK_THROWS_WITH(Config::from_env(), Catch::Contains("is not a duration"));
  unsetenv("FARMEM_SERVER_TIMEOUT");
  CHECK(Config::from_env().ec_spare_read);
  setenv("FARMEM_EC_SPARE_READ", "0", 1);
  CHECK_FALSE(Config::from_env().ec_spare_read);
  setenv("FARMEM_EC_SPARE_READ", "sometimes", 1);
  CHECK_THROWS_WITH(Config::from_env(), Catch::Contains("not 1 or 0"));
  unsetenv("FARMEM_EC_SPARE_READ");
  CHECK(Config::from_env().repair_rate == 256ull << 20);
  setenv("FARMEM_REPAIR_RATE", "64M/s", 1);
  CHECK(Config::from_env().repair_rate == 64ull << 20);
  setenv("FARMEM_REPAIR_RATE", "0", 1);
  CHECK(Config::from_env().repair_rate == 0);
  setenv("FARMEM_REPAIR_RATE", "fast", 1);
  CHECK_THROWS_WITH(Config::from_env(), Catch::Contains("FARMEM_REPAIR_RATE"));
  unsetenv("FARMEM_REPAIR_RATE");
  unsetenv("FARMEM_HW_DIRTY");
  unsetenv("FARMEM_LOCAL_MEM");
  unsetenv("FARMEM_SHM_DELAY_NS");
  unsetenv("FARMEM_STATS");
}

TEST_CASE("init rejects budgets the machine cannot honour") {
  Config c;
  c.local_mem_bytes = farmem::physical_memory_bytes() * 2;
  try {
    farmem::init(c);
    FAIL("accepted");
  } catch (const Error& e) {
    CHECK(std::string(e.what()).find("exceeds this machine's physical memory") != std::string::npos);
  }
  c.local_mem_bytes = 1 << 20;
  try {
    farmem::init(c);
    FAIL("accepted");
  } catch (const Error& e) {
    CHECK(std::string(e.what()).find("below the minimum") != std::string::npos);
  }
  c.local_mem_from = "--local-mem";  // errors name what the user typed
  CHECK_THROWS_WITH(farmem::init(c), Catch::Contains("raise --local-mem"));
  c.local_mem_bytes = 16 << 20;
  c.backend = "carrier-pigeon";
  CHECK_THROWS_WITH(farmem::init(c), Catch::Contains("is not a backend"));
  c.backend = "shm";
  c.server_path = "/nonexistent/farmem-server";
  CHECK_THROWS_WITH(farmem::init(c), Catch::Contains("FARMEM_SERVER"));
  c.server_path = "/bin/false";
  CHECK_THROWS_WITH(farmem::init(c), Catch::Contains("failed to start"));
  CHECK_FALSE(farmem::initialized());
}
