// The far address-space allocator: first fit, exhaustion, coalescing.
#include <catch2/catch.hpp>

#include "mem/far_alloc.hpp"
#include "mem/page_state.hpp"

using farmem::mem::FarAllocator;

TEST_CASE("far ranges are allocated first fit and coalesce on release") {
  FarAllocator a;
  a.reset(1, 101);
  std::uint64_t x = a.alloc(10), y = a.alloc(20), z = a.alloc(70);
  CHECK(x == 1);
  CHECK(y == 11);
  CHECK(z == 31);
  CHECK(a.alloc(1) == 0);  // exhausted
  a.release(y, 20);
  CHECK(a.alloc(25) == 0);
  a.release(x, 10);        // coalesces with y's range
  CHECK(a.alloc(25) == 1);
  a.release(1, 25);
  a.release(z, 70);
  CHECK(a.allocated_pages() == 0);
  CHECK(a.alloc(100) == 1);
}

TEST_CASE("page state words round-trip") {
  namespace ps = farmem::mem::ps;
  using farmem::mem::Kind;
  std::uint64_t s = ps::make(Kind::Resident, 123456789, ps::kDirty | ps::kAccessed);
  CHECK(ps::kind(s) == Kind::Resident);
  CHECK(ps::frame(s) == 123456789);
  CHECK(ps::pins(s) == 0);
  s += 3 * ps::kPinOne;
  CHECK(ps::pins(s) == 3);
  CHECK(ps::frame(s) == 123456789);
  s = ps::with_kind(s, Kind::Evicting);
  CHECK(ps::kind(s) == Kind::Evicting);
  CHECK((s & ps::kDirty) != 0);
  CHECK(ps::frame(s) == 123456789);
}
