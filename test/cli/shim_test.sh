#!/usr/bin/env bash
# Unmodified programs from Debian's packages under farmem-run, with a local
# memory budget of at most a quarter of their peak memory use: their output must
# match a plain run byte for byte, and their peak resident memory must stay
# under the budget plus a fixed overhead (OVERHEAD_MIB: the program's own code
# and libraries, the runtime's threads and tables, mimalloc's bookkeeping).
# Then a C program that forks, starts threads, reallocs and mremaps (shim_check),
# python3 forking children that read its far heap, a server with a client, and
# the one-line errors.
# Usage: shim_test.sh FARMEM_RUN SHIM_CHECK
set -uo pipefail
RUN=$1
CHECK=$2
OVERHEAD_MIB=48
PY=/usr/bin/python3
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fails=0
pass() { echo "PASS: $*"; }
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }

for p in "$PY" /usr/bin/sqlite3 /usr/bin/sort; do
  [[ -x $p ]] || { echo "SKIP: $p is not installed (scripts/setup.sh installs it)"; exit 77; }
done

# Peak resident memory (MiB) of a plain run of "$@", its output in $T/plain.out.
plain_peak() {
  "$PY" -c 'import resource, subprocess, sys
with open(sys.argv[1], "wb") as out:
    rc = subprocess.run(sys.argv[2:], stdout=out).returncode
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)
sys.exit(rc)' "$T/plain.out" "$@"
}

# run_case NAME BUDGET_MIB CMD...: plain run, then under farmem-run; compares.
run_case() {
  local name=$1 budget=$2
  shift 2
  local peak
  peak=$(plain_peak "$@") || { fail "$name: the plain run failed"; return; }
  if ((budget * 4 > peak)); then
    fail "$name: budget ${budget} MiB is more than a quarter of the plain peak ${peak} MiB (make the workload bigger)"
    return
  fi
  local t0=$SECONDS
  timeout 600 "$RUN" --local-mem "${budget}M" --stats -- "$@" >"$T/far.out" 2>"$T/far.err"
  local rc=$?
  if ((rc != 0)); then
    fail "$name: exit $rc under farmem-run"; tail -3 "$T/far.err"; return
  fi
  if ! cmp -s "$T/plain.out" "$T/far.out"; then
    fail "$name: output differs from the plain run"; return
  fi
  local far_peak
  far_peak=$(sed -n 's/^farmem-run: peak resident \([0-9]*\) MiB.*/\1/p' "$T/far.err")
  local faults
  faults=$(grep -o '"fetches":[0-9]*' "$T/far.err" | head -1)
  if [[ -z $far_peak ]] || ((far_peak > budget + OVERHEAD_MIB)); then
    fail "$name: peak resident ${far_peak:-?} MiB exceeds budget ${budget} + ${OVERHEAD_MIB} MiB"; return
  fi
  pass "$name: same output; peak ${far_peak} MiB under farmem (budget ${budget} MiB) vs ${peak} MiB plain; ${faults}; $((SECONDS - t0)) s"
}

# An interpreter: builds, indexes and hashes half a million strings.
cat >"$T/work.py" <<'PY'
import hashlib
rows = [("%08x" % ((i * 2654435761) % (1 << 32))) * 8 for i in range(600000)]
d = {r[:12]: i for i, r in enumerate(rows)}
h = hashlib.sha256()
for r in rows:
    h.update(r.encode())
print(len(rows), len(d), sum(d[r[:12]] for r in rows[::5]), h.hexdigest())
PY
run_case "python3" 32 "$PY" "$T/work.py"

# A sort: the whole input in one in-memory buffer.
"$PY" -c 'import random
random.seed(7)
with open("'"$T"'/in.txt", "w") as f:
    for i in range(600000):
        f.write("%x %s\n" % (random.getrandbits(64), "x" * random.randint(0, 80)))'
run_case "sort" 16 /usr/bin/sort -S 512M --parallel=1 "$T/in.txt"

# A database: sqlite3 in memory, with an index and aggregate queries.
cat >"$T/db.sql" <<'SQL'
PRAGMA cache_size = -400000;
CREATE TABLE t(id INTEGER PRIMARY KEY, k INTEGER, v TEXT);
WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 400000)
INSERT INTO t SELECT i, (i * 7919) % 100003, printf('%.120c', char(65 + i % 26)) FROM c;
CREATE INDEX tk ON t(k);
SELECT count(*), sum(k), sum(length(v)) FROM t;
SELECT k, count(*) FROM t WHERE k < 50 GROUP BY k ORDER BY k;
SELECT v FROM t WHERE id IN (1, 99999, 400000);
SQL
run_case "sqlite3" 16 /usr/bin/sqlite3 :memory: ".read $T/db.sql"

# A C program that forks, starts threads, reallocs and mremaps, checking every byte.
if timeout 600 "$RUN" --local-mem 16M -- "$CHECK" 128 >"$T/c.out" 2>"$T/c.err" && grep -q "shim_check: ok" "$T/c.out"; then
  pass "shim_check (threads, realloc, mmap/munmap/mremap/madvise, fork, system) at 16 MiB local"
else
  fail "shim_check"; tail -5 "$T/c.err"
fi

# fork() of an interpreter whose heap (its locale data too) is mostly far: each
# child reads every value from the embedded server's snapshot. The child's
# fault-handler thread reads far memory as it starts (glibc's locale set-up),
# which once left the child waiting for itself.
cat >"$T/fork.py" <<'PY'
import os
d = {i: ("%x" % (i * 2654435761)) * 4 for i in range(300000)}
total = sum(len(v) for v in d.values())
kids = []
for k in range(2):
    pid = os.fork()
    if pid == 0:
        os._exit(0 if sum(len(v) for v in d.values()) == total else 3)
    kids.append(pid)
print(total, [os.waitpid(p, 0)[1] for p in kids])
PY
if out=$(timeout 120 "$RUN" --local-mem 16M -- "$PY" "$T/fork.py" 2>"$T/fork.err") && [[ $out == "15147528 [0, 0]" ]]; then
  pass "python3 forks two children that read its far heap: $out"
else
  fail "python3 fork: printed '${out:-nothing}' (exit $?)"; tail -3 "$T/fork.err"
fi

# A server with a client: a key-value server under farmem-run, a plain client.
cat >"$T/kv.py" <<'PY'
import socket, sys
store = {}
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(1)
print(s.getsockname()[1], flush=True)
c, _ = s.accept(); f = c.makefile("rwb")
for line in f:
    op, key, *rest = line.split()
    if op == b"SET": store[key] = rest[0]; f.write(b"OK\n")
    elif op == b"GET": f.write(store.get(key, b"-") + b"\n")
    f.flush()
PY
cat >"$T/client.py" <<'PY'
import random, socket, sys
c = socket.create_connection(("127.0.0.1", int(sys.argv[1]))); f = c.makefile("rwb")
n = 60000
for i in range(n):
    f.write(b"SET k%d %s\n" % (i, (b"%d" % (i * 31337)) * 200)); f.flush(); f.readline()
random.seed(1); bad = 0
for _ in range(20000):
    i = random.randrange(n)
    f.write(b"GET k%d x\n" % i); f.flush()
    bad += f.readline().strip() != (b"%d" % (i * 31337)) * 200
print("bad", bad)
PY
timeout 600 "$RUN" --local-mem 24M --stats -- "$PY" "$T/kv.py" >"$T/kv.out" 2>"$T/kv.err" &
srv=$!
for _ in $(seq 100); do [[ -s $T/kv.out ]] && break; sleep 0.1; done
port=$(head -1 "$T/kv.out")
if [[ -n $port ]] && out=$("$PY" "$T/client.py" "$port") && [[ $out == "bad 0" ]]; then
  wait $srv
  pass "key-value server under farmem-run, plain client: 20000 reads correct ($(grep -o 'peak resident [0-9]* MiB' "$T/kv.err"))"
else
  kill $srv 2>/dev/null; wait $srv 2>/dev/null
  fail "key-value server: client said '${out:-nothing}'"; tail -3 "$T/kv.err"
fi

# Misuse: one line naming the problem, non-zero exit.
expect_error() {
  local what=$1 pattern=$2
  shift 2
  local err rc
  err=$(timeout 60 "$@" 2>&1 >/dev/null); rc=$?
  if ((rc != 0)) && [[ $(wc -l <<<"$err") -eq 1 ]] && grep -q -- "$pattern" <<<"$err"; then
    pass "$what: exit $rc, '$err'"
  else
    fail "$what: exit $rc, '$err'"
  fi
}
expect_error "bad budget" "FARMEM_LOCAL_MEM\|--local-mem\|size" "$RUN" --local-mem lots -- /bin/true
expect_error "budget too small" "below the minimum" "$RUN" --local-mem 1M -- /bin/true
expect_error "unknown backend" "not a backend" "$RUN" --backend foo://x -- /bin/true
expect_error "no program" "no program" "$RUN" --local-mem 64M
expect_error "missing program" "cannot run" "$RUN" --local-mem 64M -- /nonexistent/prog
expect_error "transparent region too big" "FARMEM_HW_MEM\|FARMEM_FAR_MEM" env FARMEM_FAR_MEM=1G FARMEM_HW_MEM=8G "$RUN" -- /bin/true
expect_error "SIGBUS faults under farmem-run" "FARMEM_HW_FAULTS=signal cannot serve" env FARMEM_HW_FAULTS=signal "$RUN" -- /bin/true
# A full far heap: malloc fails with ENOMEM (python3 raises MemoryError and
# carries on) and the runtime says once which setting to raise.
out=$(FARMEM_HW_MEM=128M timeout 120 "$RUN" --local-mem 16M -- "$PY" -c '
a = []
try:
    while True: a.append(bytearray(1 << 20))
except MemoryError:
    print("MemoryError after", len(a), "MiB")
' 2>"$T/full.err"); rc=$?
if ((rc == 0)) && [[ $out == "MemoryError after "* ]] && [[ $(wc -l <"$T/full.err") -eq 1 ]] &&
  grep -q "far heap is full (64 MiB, half of FARMEM_HW_MEM).*raise FARMEM_HW_MEM" "$T/full.err"; then
  pass "full far heap: '$out', '$(cat "$T/full.err")'"
else
  fail "full far heap: rc=$rc, '$out', '$(cat "$T/full.err")'"
fi
# Exit status and signals pass through.
"$RUN" --local-mem 64M -- /bin/sh -c 'exit 42'; rc=$?
((rc == 42)) && pass "exit status passes through (42)" || fail "exit status: got $rc, want 42"

echo "shim_test: $fails failure(s)"
exit $((fails > 0))
