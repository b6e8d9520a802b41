// The redis:// transport's pure logic: URIs, auth files, key names, Redis
// Cluster slots (values from the Redis Cluster specification) and range splitting.
#include <catch2/catch.hpp>

#include <cstdio>
#include <fstream>
#include <unistd.h>

#include "farmem/runtime.hpp"
#include "transport/redis/redis_logic.hpp"

using namespace farmem::net::redis;

TEST_CASE("redis URIs") {
  Uri u = parse_uri("redis://127.0.0.1:6380");
  CHECK_FALSE(u.cluster);
  REQUIRE(u.nodes.size() == 1);
  CHECK(u.nodes[0].host == "127.0.0.1");
  CHECK(u.nodes[0].port == 6380);
  CHECK(u.db == 0);
  CHECK(u.password.empty());

  u = parse_uri("redis://alice:s%40cret@cache.internal:7000/3");
  CHECK(u.user == "alice");
  CHECK(u.password == "s@cret");
  CHECK(u.db == 3);
  CHECK(u.shown == "redis://***@cache.internal:7000/3");

  u = parse_uri("redis://:pw@[::1]:6379");
  CHECK(u.user.empty());
  CHECK(u.password == "pw");
  CHECK(u.nodes[0].host == "::1");

  CHECK(parse_uri("redis://host").nodes[0].port == 6379);

  u = parse_uri("redis+cluster://a:7000,b:7001,c:7002");
  CHECK(u.cluster);
  REQUIRE(u.nodes.size() == 3);
  CHECK(u.nodes[2].host == "c");
  CHECK(u.nodes[2].port == 7002);

  for (const char* bad : {"redis://", "redis://host:0", "redis://host:99999", "redis://host:x", "redis://h/db",
                          "redis://a:1,b:2", "redis+cluster://a:1/2", "redis://user:@h:1", "tcp://h:1"})
    CHECK_THROWS_AS(parse_uri(bad), farmem::Error);
}

TEST_CASE("redis auth files") {
  char path[] = "/tmp/farmem-redis-auth-XXXXXX";
  int fd = mkstemp(path);
  REQUIRE(fd >= 0);
  close(fd);
  std::string user = "x", password;
  std::ofstream(path) << "justapassword\n";
  read_auth_file(path, user, password);
  CHECK(user.empty());
  CHECK(password == "justapassword");
  std::ofstream(path) << "bob hunter2\n";
  read_auth_file(path, user, password);
  CHECK(user == "bob");
  CHECK(password == "hunter2");
  std::ofstream(path) << "a b c\n";
  CHECK_THROWS_AS(read_auth_file(path, user, password), farmem::Error);
  std::remove(path);
  CHECK_THROWS_AS(read_auth_file(path, user, password), farmem::Error);
}

TEST_CASE("redis keys: one hash tag per stripe of pages") {
  std::string prefix = key_prefix("node7", 1234, 1700000000);
  CHECK(prefix == "farmem:{node7-1234-1700000000-");
  CHECK(page_key(prefix, 0) == "farmem:{node7-1234-1700000000-0}:0");
  CHECK(page_key(prefix, 15) == "farmem:{node7-1234-1700000000-0}:15");
  CHECK(page_key(prefix, 16) == "farmem:{node7-1234-1700000000-1}:16");
  // Pages of a stripe share a slot; stripes spread over the slots.
  CHECK(key_slot(page_key(prefix, 3)) == key_slot(page_key(prefix, 12)));
  std::vector<bool> seen(16384);
  unsigned distinct = 0;
  for (std::uint64_t stripe = 0; stripe < 4096; ++stripe) {
    unsigned slot = key_slot(page_key(prefix, stripe * kPagesPerStripe));
    if (!seen[slot]) seen[slot] = true, ++distinct;
  }
  CHECK(distinct > 3000);  // 4096 stripes into 16384 slots: few collisions
}

TEST_CASE("Redis Cluster key slots, as the specification gives them") {
  CHECK(crc16("123456789") == 0x31C3);  // the spec's check value for CRC16-CCITT (XMODEM)
  CHECK(key_slot("foo") == 12182);
  CHECK(key_slot("{user1000}.following") == key_slot("{user1000}.followers"));
  CHECK(key_slot("{user1000}.following") == key_slot("user1000"));
  CHECK(key_slot("foo{}{bar}") == key_slot("foo{}{bar}"));  // an empty tag: the whole key is hashed
  CHECK(key_slot("foo{}{bar}") != key_slot("bar"));
  CHECK(key_slot("foo{{bar}}zap") == key_slot("{bar"));
  CHECK(key_slot("foo{bar}{zap}") == key_slot("bar"));
}

TEST_CASE("a transfer splits at page boundaries in 512-byte units") {
  auto p = split(0, 4096);
  REQUIRE(p.size() == 1);
  CHECK(p[0].whole());

  p = split(4096 * 3 + 3584, 512 + 4096 + 1024);
  REQUIRE(p.size() == 3);
  CHECK(p[0].page == 3);
  CHECK(p[0].in_page == 3584);
  CHECK(p[0].len == 512);
  CHECK(p[0].at == 0);
  CHECK(p[1].page == 4);
  CHECK(p[1].whole());
  CHECK(p[1].at == 512);
  CHECK(p[2].page == 5);
  CHECK(p[2].in_page == 0);
  CHECK(p[2].len == 1024);
  CHECK(p[2].at == 4608);

  CHECK(split(100, 512).empty());
  CHECK(split(0, 100).empty());
  CHECK(split(0, 0).empty());
}
