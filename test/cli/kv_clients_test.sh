#!/usr/bin/env bash
# farmem-kv against memcached clients that no one here wrote: libmemcached's
# protocol conformance test (memccapable, every ASCII test), memcstat,
# memcdump, memcslap --test=mget (1000-key get lines), and pymemcache
# (get_many, gets/cas, incr/decr, touch, expiry); then the same tricky command
# bytes sent to Debian's memcached and to farmem-kv, replies compared byte for
# byte; then --cache evicting at capacity, and expired values giving their
# memory back without being read. Needs memcached, libmemcached-tools and
# python3-pymemcache (scripts/setup.sh installs them); skips without them.
set -uo pipefail
KV=$1
PY=/usr/bin/python3
source "$(dirname "$0")/harness.sh"
source "$(dirname "$0")/kv_harness.sh"

for tool in memccapable memcstat memcdump memcslap memcached; do
  command -v "$tool" >/dev/null || { echo "SKIP: $tool is missing; run scripts/setup.sh (Debian: memcached libmemcached-tools)"; exit 77; }
done
"$PY" -c 'import pymemcache' 2>/dev/null || { echo "SKIP: python3-pymemcache is missing; run scripts/setup.sh"; exit 77; }

stat_of() {  # stat_of PORT NAME: one value of `stats`
  "$PY" - "$1" "$2" <<'PY'
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1]))); s.sendall(b"stats\r\n"); b = b""
while not b.endswith(b"END\r\n"): b += s.recv(65536)
print(dict(l.split(" ")[1:3] for l in b.decode().split("\r\n") if l.startswith("STAT "))[sys.argv[2]])
PY
}

start_kv main --local-mem 16M --capacity 256M || exit 1

# 1. libmemcached's conformance test, ASCII protocol.
out=$(timeout 120 memccapable -a -h 127.0.0.1 -p "$port" 2>&1)
if grep -q "All tests passed" <<<"$out" && ! grep -q FAIL <<<"$out"; then ok "memccapable -a: $(grep -c '\[pass\]' <<<"$out") ASCII tests passed"
else bad "memccapable -a:"; echo "$out" | grep -v '\[pass\]' | sed 's/^/     /'; fi

# 2. memcstat parses our version and statistics.
out=$(timeout 30 memcstat --servers="127.0.0.1:$port" 2>&1)
if [[ $? -eq 0 ]] && grep -q "version: 1.6.18-farmem" <<<"$out" && grep -q "curr_items:" <<<"$out"; then
  ok "memcstat: $(grep -E 'version|curr_items' <<<"$out" | tr -s '\t\n' '  ')"
else bad "memcstat: $out"; fi

# 3. pymemcache: answers checked.
if out=$(timeout 60 "$PY" - "$port" 2>&1 <<'PY'
import sys, time
from pymemcache.client.base import Client
c = Client(("127.0.0.1", int(sys.argv[1])), default_noreply=False)
fails = []
def check(name, got, want):
    if got != want: fails.append("%s: got %r, want %r" % (name, got, want))
c.flush_all()
keys = {"pm:%d" % i: ("v%d" % i).encode() * (1 + i % 50) for i in range(500)}
check("set_many", c.set_many(keys), [])
check("get_many", c.get_many(list(keys) + ["pm:none"]), keys)
v, cas = c.gets("pm:1")
check("gets", v, keys["pm:1"])
check("cas with the right unique", c.cas("pm:1", b"new", cas), True)
check("cas with a stale unique", c.cas("pm:1", b"newer", cas), False)
check("cas on a missing key", c.cas("pm:none", b"x", 1), None)
check("value after cas", c.get("pm:1"), b"new")
check("add existing", c.add("pm:2", b"x"), False)
check("replace missing", c.replace("pm:none", b"x"), False)
check("append", (c.append("pm:1", b"+"), c.prepend("pm:1", b"-"), c.get("pm:1")), (True, True, b"-new+"))
c.set("n", b"41")
check("incr", c.incr("n", 1), 42)
check("decr below zero", c.decr("n", 100), 0)
check("incr wraps", (c.set("n", b"18446744073709551615"), c.incr("n", 2)), (True, 1))
check("incr missing", c.incr("pm:none", 1), None)
c.set("short", b"a", expire=1)
c.set("long", b"b", expire=100)
check("touch", (c.touch("short", 100), c.touch("pm:none", 10)), (True, False))
c.set("gone", b"c", expire=1)
time.sleep(2.1)
check("expired", c.get("gone"), None)
check("touched survives", c.get("short"), b"a")
check("unexpired", c.get("long"), b"b")
check("delete", (c.delete("long"), c.get("long")), (True, None))
print("\n".join(fails) if fails else "get_many, gets/cas, add/replace, append/prepend, incr/decr, touch, expiry: all as memcached answers")
sys.exit(1 if fails else 0)
PY
); then ok "pymemcache: $out"; else bad "pymemcache: $out"; fi

# 4. memcdump lists exactly the keys stored.
"$PY" - "$port" <<'PY'
import sys
from pymemcache.client.base import Client
c = Client(("127.0.0.1", int(sys.argv[1])))
c.flush_all()
c.set_many({"dump:%03d" % i: b"x" * (10 + 100 * i) for i in range(40)})
PY
out=$(timeout 30 memcdump --servers="127.0.0.1:$port" 2>&1 | sort)
if [[ $out == "$(for i in $(seq 0 39); do printf 'dump:%03d\n' "$i"; done)" ]]; then ok "memcdump: the 40 keys stored, over $(stat_of "$port" curr_items) items in several size classes"
else bad "memcdump: $(head -c 300 <<<"$out")"; fi

# 5. memcslap --test=mget: 4 threads each get 1000 keys in one line.
hits0=$(stat_of "$port" get_hits) miss0=$(stat_of "$port" get_misses)
out=$(timeout 120 memcslap --servers="127.0.0.1:$port" --test=mget --concurrency=4 --execute-number=1000 2>&1)
rc=$?
hits=$(( $(stat_of "$port" get_hits) - hits0 )) misses=$(( $(stat_of "$port" get_misses) - miss0 ))
if ((rc == 0 && hits >= 4000 && misses == 0)); then ok "memcslap --test=mget: $hits hits, no misses; $(grep 'mget' <<<"$out" | tr -s ' ')"
else bad "memcslap --test=mget: rc $rc, $hits hits, $misses misses: $out"; fi

# 6. The same bytes to Debian's memcached and to farmem-kv: the same replies
# (CAS uniques and the version string aside).
mc_port=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
memcached -p "$mc_port" -U 0 -l 127.0.0.1 -m 64 -u "$(id -un)" >"$tmp/memcached.log" 2>&1 &
mc_pid=$!
pids+=("$mc_pid")
cat >"$tmp/compare.py" <<'PY'
import re, socket, sys, time
cases = [
  b"set a 0 0 1\r\nx\r\nget a b a\r\n", b"frob k 0 0 1\r\nx\r\n", b"set k 0 0 notanumber\r\nxy\r\n",
  b"set k -1 0 1\r\nx\r\n", b"set k 0 0 -1\r\nx\r\n", b"set k 0 0 3\r\nabcde\r\nget k\r\n",
  b"set k 0 0 3 noreply\r\nabcde\r\nget k\r\n", b"set k 0 0 3 garbage\r\nabc\r\n", b"set k 0 0\r\nabc\r\n",
  b"set " + b"k" * 251 + b" 0 0 1\r\nx\r\n", b"get a " + b"k" * 251 + b"\r\n", b"get\r\n", b"\r\n", b"GET a\r\n",
  b"set big 0 0 2000000\r\n" + b"x" * 2000000 + b"\r\nget big\r\n", b"set k 0 0 2147483647\r\n",
  b"set n 0 0 2\r\n10\r\ndecr n 1\r\nget n\r\nincr n 18446744073709551615\r\ndecr n 100\r\n",
  b"set n 0 0 20\r\n18446744073709551615\r\nincr n 1\r\nincr n abc\r\nincr n -1\r\nincr nokey 1\r\n",
  b"set s 0 0 3\r\nabc\r\nincr s 1\r\nset s 0 0 3\r\n 12\r\nincr s 1\r\nget s\r\nset s 0 0 0\r\n\r\nincr s 1\r\n",
  b"set k 0 0 1\r\n9\r\nincr k 1\r\nget k\r\nincr k 1 noreply\r\nincr k 00001\r\nincr k 1a\r\n",
  b"set a 0 0 1\r\nx\r\ntouch nokey 10\r\ntouch a 10\r\ntouch a\r\ntouch a abc\r\n",
  b"set a 0 0 1\r\nx\r\ngat 10 a nokey\r\ngats 10 a\r\ngat\r\ngat 10\r\ngat abc a\r\n",
  b"set a 0 0 1\r\nx\r\ncas a 0 0 1\r\ny\r\ncas a 0 0 1 1\r\ny\r\ncas nokey 0 0 1 1\r\ny\r\ncas a 0 0 1 abc\r\ny\r\n",
  b"append nokey 0 0 1\r\ny\r\nset a 0 0 1\r\nx\r\nappend a 5 5 2\r\nzz\r\nprepend a 0 0 1 noreply\r\n<\r\nget a\r\n",
  b"set a 0 0 1\r\nx\r\nadd a 0 0 1\r\nq\r\nreplace nokey 0 0 1\r\nq\r\nreplace a 3 0 1\r\nr\r\nget a\r\n",
  b"set a 0 0 1\r\nx\r\ndelete a 0\r\ndelete a 5\r\ndelete nokey noreply\r\ndelete\r\ndelete a 0 noreply\r\n",
  b"verbosity 1\r\nverbosity\r\nverbosity 1 noreply\r\nverbosity x\r\nverbosity 1 2\r\nverbosity 1 2 3\r\n",
  b"flush_all\r\nflush_all 0\r\nflush_all noreply\r\nflush_all x\r\nflush_all -1\r\nflush_all 5 x\r\nflush_all 1 2 3\r\n",
  b"stats nonsense\r\nstats reset\r\nstats cachedump\r\nstats cachedump 300 0\r\n",
  b"set e 0 -1 1\r\nx\r\nget e\r\nset e 0 2592001 1\r\nx\r\nget e\r\n",
  b"set  sp  0  0  1 \r\nx\r\nget sp\r\nset k 0 0 1\nx\r\nget k\n",
  b"set k 4294967296 0 1\r\nx\r\nget k\r\nset k 4294967295 0 1\r\nx\r\nget k\r\n",
  b"set big 0 0 2000000 noreply\r\n" + b"x" * 2000000 + b"\r\nget big\r\n",
  b"get " + b" ".join(b"k%d" % i for i in range(3000)) + b"\r\n", b"gets " + b"x" * 3000 + b"\r\n",
  b"sat " + b"x" * 3000 + b"\r\n", b"sat " + b"x" * 100000 + b"\r\nversion\r\n",
  b"set k 0 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25\r\nx\r\n",
  b"quit extra\r\nversion\r\n",
]
def run(port, case):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"flush_all\r\n")
    b = b""
    while not b.endswith(b"OK\r\n"): b += s.recv(100)
    s.sendall(case)
    s.settimeout(1.0)                # the first byte may be slow on a busy machine; then 0.3 s of quiet ends it
    out = b""
    try:
        while True:
            d = s.recv(1 << 20)
            s.settimeout(0.3)
            if not d: out += b"<closed>"; break
            out += d
    except socket.timeout: pass
    except (ConnectionResetError, BrokenPipeError): out += b"<closed>"
    s.close()
    out = re.sub(rb"(VALUE \S+ \d+ \d+) \d+\r\n", rb"\1 CAS\r\n", out)
    return re.sub(rb"VERSION \S+", b"VERSION V", out)
mc, kv = int(sys.argv[1]), int(sys.argv[2])
bad = 0
for c in cases:
    a, b = run(mc, c), run(kv, c)
    if a != b:
        bad += 1
        print("differs on %r:\n  memcached %r\n  farmem-kv %r" % (c[:80], a[:200], b[:200]))
print("%d of %d cases answered as memcached answers" % (len(cases) - bad, len(cases)))
sys.exit(1 if bad else 0)
PY
for _ in $(seq 50); do "$PY" -c "import socket; socket.create_connection(('127.0.0.1', $mc_port))" 2>/dev/null && break; sleep 0.1; done
if out=$(timeout 120 "$PY" "$tmp/compare.py" "$mc_port" "$port" 2>&1); then ok "side by side with memcached $(memcached -V | cut -d' ' -f2): $out"
else bad "side by side with memcached:"; echo "$out" | sed 's/^/     /'; fi
kill -TERM "$kv_pid" "$mc_pid"; wait "$kv_pid" "$mc_pid" 2>/dev/null

# 7. --cache at capacity: every set stored, the oldest dropped and counted;
#    expired values give their memory back with no one reading them.
if start_kv cache --local-mem 16M --capacity 4M --cache; then
  if out=$(timeout 120 "$PY" - "$port" 2>&1 <<'PY'
import sys, time
from pymemcache.client.base import Client
c = Client(("127.0.0.1", int(sys.argv[1])))
v = b"c" * 4000                      # 4 KiB chunks: 1024 fit in 4 MiB
for i in range(4000):
    if not c.set("c:%d" % i, v, noreply=False): print("set", i, "refused"); sys.exit(1)
    if i % 50 == 0 and i > 0 and c.get("c:0") != v: print("hot key c:0 evicted at", i); sys.exit(1)
st = c.stats()
ev, items = st[b"evictions"], st[b"curr_items"]
recent = sum(c.get("c:%d" % i) == v for i in range(3900, 4000))
ok = ev >= 4000 - 1024 and items <= 1024 and recent == 100
print("4000 sets into room for 1024: %d evictions, %d items, the 100 newest and a hot key kept" % (ev, items))
sys.exit(0 if ok else 1)
PY
  ); then ok "cache mode: $out"; else bad "cache mode: $out"; fi
  kill -TERM "$kv_pid"; wait "$kv_pid" 2>/dev/null
fi
if start_kv expiry --local-mem 16M --capacity 4M; then
  if out=$(timeout 60 "$PY" - "$port" 2>&1 <<'PY'
import sys, time
from pymemcache.client.base import Client
from pymemcache.exceptions import MemcacheServerError
c = Client(("127.0.0.1", int(sys.argv[1])))
v = b"e" * 4000
n = 0
try:
    while c.set("e:%d" % n, v, expire=1, noreply=False): n += 1
except MemcacheServerError as e:
    if "out of memory storing object" not in str(e): raise
full = c.stats()
time.sleep(3.2)                      # expired after 1 s, swept within the next
st = c.stats()
again = sum(c.set("f:%d" % i, v, noreply=False) for i in range(n))
print("a full store (%d values, expiry 1 s) holds %d items 3 s later (reclaimed %d, unfetched %d) and takes %d new values"
      % (n, st[b"curr_items"], st[b"reclaimed"], st[b"expired_unfetched"], again))
sys.exit(0 if n >= 1000 and st[b"curr_items"] == 0 and st[b"expired_unfetched"] == n and again == n else 1)
PY
  ); then ok "expiry: $out"; else bad "expiry: $out"; fi
  kill -TERM "$kv_pid"; wait "$kv_pid" 2>/dev/null
fi

echo "$fails failure(s)"
((fails == 0))
