#!/usr/bin/env bash
# The installed tree, used the way a new user would: `meson install` into a
# scratch directory (moved elsewhere afterwards: the tree must not depend on
# where it was installed), then an outside program built against it with
# pkg-config and with a Meson project (dependency('farmem')) runs without
# LD_LIBRARY_PATH and pages through the installed farmem-server; the installed
# farmem-run runs a program with the installed libfarmem-preload.so.
# Usage: install_test.sh BUILD_DIR
set -uo pipefail
BUILD=$1
PY=/usr/bin/python3
source "$(dirname "$0")/harness.sh"
chmod 755 "$tmp"
unset LD_LIBRARY_PATH FARMEM_SERVER FARMEM_PRELOAD PKG_CONFIG_PATH
export FARMEM_STATS_DIR=off

prefix=$(meson introspect "$BUILD" --buildoptions | $PY -c 'import json,sys; print(next(o["value"] for o in json.load(sys.stdin) if o["name"] == "prefix"))')
libdir=$(meson introspect "$BUILD" --buildoptions | $PY -c 'import json,sys; print(next(o["value"] for o in json.load(sys.stdin) if o["name"] == "libdir"))')
if ! meson install -C "$BUILD" --destdir "$tmp/dest" --no-rebuild --quiet >"$tmp/install.log" 2>&1; then
  bad "meson install: $(tail -3 "$tmp/install.log")"
  exit 1
fi
P=$tmp/scratch/prefix
mkdir -p "$tmp/scratch" && mv "$tmp/dest$prefix" "$P"
for f in bin/farmem-run bin/farmem-server bin/farmem-stat "$libdir/libfarmem.so" "$libdir/libfarmem-preload.so" \
  "$libdir/pkgconfig/farmem.pc" include/farmem/far.hpp include/farmem/farmem.h; do
  [[ -e $P/$f ]] || bad "not installed: $f"
done
export PKG_CONFIG_PATH=$P/$libdir/pkgconfig
if grep -q '^prefix=/' "$PKG_CONFIG_PATH/farmem.pc"; then  # a build dir configured before pkgconfig.relocatable
  echo "note: $BUILD predates pkgconfig.relocatable (meson configure $BUILD -Dpkgconfig.relocatable=true); using the moved prefix"
  sed -i "s|^prefix=.*|prefix=$P|" "$PKG_CONFIG_PATH/farmem.pc"
fi

# 1. pkg-config.
cat >"$tmp/outside.cc" <<'CC'
#include <cstdint>
#include <cstdio>
#include <farmem/far.hpp>
#include <farmem/runtime.hpp>
int main() {
  const std::size_t n = (64u << 20) / sizeof(std::uint64_t);  // 64 MiB, budget 16 MiB: pages go far
  farmem::FarArray<std::uint64_t> a(n);
  for (std::size_t i = 0; i < n; i += 512) { farmem::Scope s; a.mut(s, i) = i; }
  std::uint64_t sum = 0;
  for (std::size_t i = 0; i < n; i += 512) { farmem::Scope s; sum += a.get(s, i); }
  std::printf("outside: %s evictions %llu\n", sum == (n / 512) * (n / 512 - 1) / 2 * 512 ? "ok" : "WRONG",
              static_cast<unsigned long long>(farmem::stats().evictions));
}
CC
flags=$(pkg-config --cflags --libs farmem) || bad "pkg-config --cflags --libs farmem failed"
if g++ -std=c++20 -O1 "$tmp/outside.cc" -o "$tmp/outside" $flags 2>"$tmp/cc.err"; then
  ldd "$tmp/outside" | grep -q "libfarmem.so => $P/" && ok "pkg-config: $flags" || bad "links $(ldd "$tmp/outside" | grep farmem)"
  out=$(cd / && FARMEM_LOCAL_MEM=16M "$tmp/outside" 2>&1)
  [[ $out == "outside: ok evictions "* && ${out##* } -gt 0 ]] && ok "the outside program runs (no LD_LIBRARY_PATH): $out" ||
    bad "outside program: $out"
else
  bad "g++ against the installed tree: $(head -5 "$tmp/cc.err")"
fi

# 2. A Meson project: dependency('farmem') finds the installed farmem.pc.
mkdir -p "$tmp/mproj"
cp "$tmp/outside.cc" "$tmp/mproj/"
cat >"$tmp/mproj/meson.build" <<'MESON'
project('outside', 'cpp', default_options : ['cpp_std=c++20'])
executable('outside', 'outside.cc', dependencies : dependency('farmem'))
MESON
if meson setup "$tmp/mproj/b" "$tmp/mproj" >"$tmp/meson.log" 2>&1 && ninja -C "$tmp/mproj/b" >>"$tmp/meson.log" 2>&1; then
  out=$(FARMEM_LOCAL_MEM=16M "$tmp/mproj/b/outside" 2>&1)
  [[ $out == "outside: ok"* ]] && ok "a Meson project with dependency('farmem'): $out" || bad "meson-built program: $out"
else
  bad "Meson project: $(tail -5 "$tmp/meson.log")"
fi

# 3. The installed binaries find their libraries; farmem-run its preload library and server.
for b in "$P"/bin/*; do
  ldd "$b" | grep -q 'not found' && bad "$b: $(ldd "$b" | grep 'not found')"
done
ok "every installed binary finds its libraries"
"$P/bin/farmem-stat" --help >/dev/null && ok "installed farmem-stat runs" || bad "farmem-stat --help"
seen=$("$P/bin/farmem-run" -- /bin/sh -c 'echo "$LD_PRELOAD $FARMEM_SERVER"')
[[ $seen == "$P/$libdir/libfarmem-preload.so $P/bin/farmem-server" ]] && ok "farmem-run uses the installed preload library and server" ||
  bad "farmem-run: $seen"
out=$("$P/bin/farmem-run" --local-mem 16M --stats -- $PY -c 'b = bytearray(48 << 20); print("sum", sum(b[::4096]))' 2>&1)
grep -q '^sum 0$' <<<"$out" && grep -q '"evictions":[1-9]' <<<"$out" && ok "installed farmem-run runs a program far" ||
  bad "installed farmem-run: $out"

exit $((fails > 0))
