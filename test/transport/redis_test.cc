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

TEST_CASE("a stripe's slot, computed without building a key, is its keys' slot") {
  const std::string prefix = key_prefix("host", 42, 1700000000123456ull);
  for (std::uint64_t stripe : {0ull, 1ull, 9ull, 10ull, 12345ull, 18446744073709551615ull / kPagesPerStripe})
    for (std::uint64_t page : {stripe * kPagesPerStripe, stripe * kPagesPerStripe + kPagesPerStripe - 1})
      CHECK(stripe_slot(prefix, stripe) == key_slot(page_key(prefix, page)));
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

TEST_CASE("MOVED and ASK redirections") {
  Redirect r;
  REQUIRE(parse_redirect("MOVED 3999 127.0.0.1:6381", "seed", r));
  CHECK(!r.ask);
  CHECK(r.slot == 3999);
  CHECK(r.node.host == "127.0.0.1");
  CHECK(r.node.port == 6381);
  REQUIRE(parse_redirect("ASK 16383 redis-2.internal:7000", "seed", r));
  CHECK(r.ask);
  CHECK(r.slot == 16383);
  CHECK(r.node.host == "redis-2.internal");
  REQUIRE(parse_redirect("MOVED 7 [::1]:7001", "seed", r));
  CHECK(r.node.host == "::1");
  CHECK(r.node.port == 7001);
  REQUIRE(parse_redirect("MOVED 7 :7001", "seed", r));  // the node does not know its address: the one we asked
  CHECK(r.node.host == "seed");
  CHECK(!parse_redirect("ERR unknown command", "seed", r));
  CHECK(!parse_redirect("MOVED 16384 127.0.0.1:6381", "seed", r));  // no such slot
  CHECK(!parse_redirect("MOVED 12 127.0.0.1", "seed", r));           // no port
  CHECK(!parse_redirect("MOVED 12 127.0.0.1:0", "seed", r));
  CHECK(!parse_redirect("MOVED x 127.0.0.1:6381", "seed", r));
  CHECK(!parse_redirect("MOVEDX 1 127.0.0.1:6381", "seed", r));
}

TEST_CASE("a CLUSTER SLOTS reply parsed without allocating, as the reaper reads it") {
  // Redis 7's form: [first, last, [host, port, id, metadata], replica...]; the
  // second master serves two ranges, and one node does not know its address.
  const std::string master_a = "*4\r\n$9\r\n127.0.0.1\r\n:7001\r\n$3\r\naaa\r\n*0\r\n";
  const std::string replica = "*4\r\n$9\r\n127.0.0.1\r\n:7004\r\n$3\r\nddd\r\n*0\r\n";
  const std::string master_b = "*3\r\n$0\r\n\r\n:7002\r\n$3\r\nbbb\r\n";
  const std::string reply = "*3\r\n"
                            "*4\r\n:0\r\n:8191\r\n" + master_a + replica +
                            "*3\r\n:8192\r\n:10000\r\n" + master_b +
                            "*3\r\n:10001\r\n:16383\r\n" + master_b;
  std::vector<std::uint16_t> owner(kSlots, 999);
  SlotOwner nodes[4];
  unsigned count = 0;
  CHECK(parse_cluster_slots(reply.data(), reply.size(), nodes, 4, &count, owner.data()) ==
        static_cast<long>(reply.size()));
  REQUIRE(count == 2);
  CHECK(std::string(nodes[0].host) == "127.0.0.1");
  CHECK(nodes[0].port == 7001);
  CHECK(std::string(nodes[1].host).empty());
  CHECK(nodes[1].port == 7002);
  CHECK(owner[0] == 0);
  CHECK(owner[8191] == 0);
  CHECK(owner[8192] == 1);
  CHECK(owner[16383] == 1);
  // Every prefix is incomplete, never wrong; an error reply and too many masters are not a map.
  for (std::size_t cut = 0; cut < reply.size(); ++cut)
    CHECK(parse_cluster_slots(reply.data(), cut, nodes, 4, &count, owner.data()) == 0);
  const std::string error = "-ERR This instance has cluster support disabled\r\n";
  CHECK(parse_cluster_slots(error.data(), error.size(), nodes, 4, &count, owner.data()) == -1);
  CHECK(parse_cluster_slots(reply.data(), reply.size(), nodes, 1, &count, owner.data()) == -1);
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
