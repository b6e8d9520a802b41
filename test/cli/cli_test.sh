#!/usr/bin/env bash
# Command-line behaviour of farmem-bench and the runtime's start-up: bad input
# ends with exactly one line on stderr naming the problem and a non-zero exit;
# FARMEM_STATS=1 prints one JSON line; a memory server killed mid-run ends the
# client with a clear error instead of a hang.
set -uo pipefail
BENCH=$1
SERVER=$2
COPY_FLOOR=$3
PIN_ALL=$4
FORK_SCOPE=$5
fails=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# expect_error NAME PATTERN -- COMMAND...: non-zero exit, one stderr line matching PATTERN.
expect_error() {
  local name=$1 pattern=$2
  shift 3
  timeout 60 "$@" >"$tmp/out" 2>"$tmp/err"
  local rc=$? lines
  lines=$(wc -l <"$tmp/err")
  if [[ $rc -eq 0 || $rc -eq 124 || $lines -ne 1 ]] || ! grep -qE "$pattern" "$tmp/err"; then
    echo "FAIL $name: rc=$rc, $lines stderr line(s):"; sed 's/^/    /' "$tmp/err"
    fails=$((fails + 1))
  else
    echo "ok   $name: $(cat "$tmp/err")"
  fi
}

small=(--working-set 64M --ops 20000)
expect_error "unparseable working set" "working-set.*not a size" -- "$BENCH" --working-set 12Q
expect_error "unparseable local memory" "local-mem.*not a size" -- "$BENCH" "${small[@]}" --local-mem lots
expect_error "bad percentage" "not a percentage" -- "$BENCH" "${small[@]}" --local-mem 150%
expect_error "budget above the machine" "exceeds this machine's physical memory.*lower --local-mem" -- "$BENCH" "${small[@]}" --local-mem 64T
expect_error "budget below the minimum" "below the minimum.*raise --local-mem" -- "$BENCH" "${small[@]}" --local-mem 1M
expect_error "unknown workload" "workload 'zigzag'" -- "$BENCH" --workload zigzag
expect_error "unknown option" "unknown option --frobnicate" -- "$BENCH" --frobnicate
expect_error "server binary missing" "FARMEM_SERVER.*not an executable" -- env FARMEM_SERVER=/nonexistent/farmem-server "$BENCH" "${small[@]}"
expect_error "server fails to start" "failed to start \(exited with status 1\)" -- env FARMEM_SERVER=/bin/false "$BENCH" "${small[@]}"
expect_error "unknown backend" "is not a backend" -- env FARMEM_BACKEND=pigeon "$BENCH" "${small[@]}"
expect_error "bad FARMEM_STATS" "FARMEM_STATS='maybe'" -- env FARMEM_STATS=maybe "$BENCH" "${small[@]}"
expect_error "bad delay" "FARMEM_SHM_DELAY_NS" -- env FARMEM_SHM_DELAY_NS=soon "$BENCH" "${small[@]}"
expect_error "bad FARMEM_HW_KEEP_HOT" "FARMEM_HW_KEEP_HOT=.maybe. is not 1 or 0" -- env FARMEM_HW_KEEP_HOT=maybe "$BENCH" "${small[@]}" --mode hw
expect_error "bad FARMEM_HW_FAULT_AROUND" "FARMEM_HW_FAULT_AROUND=.yes. is not 1 or 0" -- env FARMEM_HW_FAULT_AROUND=yes "$BENCH" "${small[@]}" --mode hw
expect_error "server without arguments" "listen tcp://HOST:PORT is required" -- "$SERVER"
expect_error "server bad capacity" "capacity.*not a size" -- "$SERVER" --listen tcp://127.0.0.1:0 --capacity lots

# FARMEM_STATS=1: one JSON line with the counters on stderr at exit.
if FARMEM_STATS=1 "$BENCH" "${small[@]}" --json >"$tmp/out" 2>"$tmp/err" &&
   python3 - "$tmp/out" "$tmp/err" <<'PY'
import json, sys
run = json.loads(open(sys.argv[1]).read())
for k in ["workload", "mode", "working_set_bytes", "local_mem_bytes", "ops", "seconds",
          "ops_per_sec", "faults", "evictions", "fault_p50_ns", "fault_p99_ns"]:
    assert k in run, k
assert run["verified"] is True and run["faults"] > 0 and run["evictions"] > 0, run
lines = [l for l in open(sys.argv[2]).read().splitlines() if l.strip()]
assert len(lines) == 1, lines
st = json.loads(lines[0])
for k in ["faults", "evictions", "writebacks", "bytes_in", "bytes_out", "alloc_stalls",
          "fault_p50_ns", "fault_p99_ns", "local_mem_bytes", "far_bytes"]:
    assert k in st, k
PY
then echo "ok   FARMEM_STATS=1 prints one JSON line; bench JSON has the contract fields"
else echo "FAIL stats/json:"; cat "$tmp/out" "$tmp/err"; fails=$((fails + 1)); fi

# The transparent region as an ordinary user. With vm.unprivileged_userfaultfd=0
# the kernel gives only a user-mode-only userfaultfd: enough in SIGBUS mode
# (whose system calls on missing pages fail anyway), refused with the handler
# thread, whose callers expect system calls on far memory to work.
if [[ $(id -u) -eq 0 ]] && command -v setpriv >/dev/null && id nobody >/dev/null 2>&1 &&
   [[ $(cat /proc/sys/vm/unprivileged_userfaultfd 2>/dev/null) == 0 ]]; then
  as_nobody() { (cd / && setpriv --reuid=nobody --regid="$(id -g nobody)" --clear-groups "$@"); }
  if as_nobody env FARMEM_HW_FAULTS=signal "$BENCH" --mode hw --working-set 32M --ops 2000 --json >"$tmp/out" 2>"$tmp/err" &&
     grep -q '"verified":true' "$tmp/out"; then
    echo "ok   --mode hw as an unprivileged user, SIGBUS mode (user-mode-only userfaultfd)"
  else echo "FAIL --mode hw as an unprivileged user, SIGBUS mode:"; cat "$tmp/err"; fails=$((fails + 1)); fi
  as_nobody "$BENCH" --mode hw --working-set 32M --ops 2000 --json >"$tmp/out" 2>"$tmp/err"; rc=$?
  if ((rc != 0)) && [[ $(wc -l <"$tmp/err") -eq 1 ]] && grep -q "sysctl -w vm.unprivileged_userfaultfd=1" "$tmp/err"; then
    echo "ok   --mode hw as an unprivileged user, handler thread: refused: $(cat "$tmp/err")"
  else echo "FAIL --mode hw as an unprivileged user, handler thread: rc=$rc"; cat "$tmp/err"; fails=$((fails + 1)); fi
else
  echo "skip --mode hw as an unprivileged user (needs root, setpriv, a nobody user and vm.unprivileged_userfaultfd=0)"
fi

# The memory server killed mid-run: the client exits non-zero with a message, quickly.
"$BENCH" --working-set 256M --ops 500000000 --no-verify >"$tmp/out" 2>"$tmp/err" &
bench=$!
server=""
for _ in $(seq 100); do
  server=$(pgrep -P "$bench" -x farmem-server || true)
  [[ -n $server ]] && break
  sleep 0.1
done
sleep 1
start=$(date +%s)
[[ -n $server ]] && kill -9 "$server"
timeout 15 tail --pid="$bench" -f /dev/null
wait "$bench"
rc=$?
took=$(( $(date +%s) - start ))
if [[ -n $server && $rc -ne 0 && $took -le 15 ]] && grep -q "memory server (pid $server) is gone" "$tmp/err"; then
  echo "ok   server killed mid-run: exit $rc after ${took}s: $(cat "$tmp/err")"
else
  echo "FAIL server killed mid-run: server=$server rc=$rc took=${took}s"; cat "$tmp/err"; kill -9 "$bench" 2>/dev/null
  fails=$((fails + 1))
fi

# The server never outlives its client.
"$BENCH" --working-set 64M --ops 200000000 --no-verify >/dev/null 2>&1 &
bench=$!
sleep 1
server=$(pgrep -P "$bench" -x farmem-server || true)
kill -9 "$bench"; wait "$bench" 2>/dev/null
sleep 2.5
if [[ -n $server ]] && ! kill -0 "$server" 2>/dev/null; then
  echo "ok   server exits when its client is killed"
else
  echo "FAIL server $server outlived its killed client"; fails=$((fails + 1))
  [[ -n $server ]] && kill -9 "$server" 2>/dev/null
fi

# Every local frame pinned by one open scope: the runtime gives up after 20 s
# without a single frame freed, with a line naming the cause.
expect_error "every frame pinned" "no free local frame for 20 s: open scopes pin every local page" -- "$PIN_ALL"

# fork() from inside a scope returns (the forking thread acknowledges the
# eviction in flight itself); fork() while another thread sleeps in a scope
# ends with one line after 20 s instead of hanging.
if out=$(timeout 120 "$FORK_SCOPE" inside 2>&1); then echo "ok   $out"
else echo "FAIL fork inside a scope: $out"; fails=$((fails + 1)); fi
expect_error "fork while a scope is held" "fork\(\) waited 20 s for the evictor.*end scopes before fork\(\)" -- "$FORK_SCOPE" held

# farmem-copy-floor: a small run prints every measurement, bad input is refused.
if out=$(timeout 120 "$COPY_FLOOR" --store 16M --pages 2000 --repeat 1) &&
  /usr/bin/python3 -c 'import json,sys; d=json.loads(sys.argv[1]); ks=["memcpy_ns","readv_1_ns","readv_64_ns","writev_64_ns","writev_64c_ns","first_touch_ns","zap_1_ns"]; sys.exit(0 if all(d[k] > 0 for k in ks) and d["uffd_copy_1_ns"] != 0 else 1)' "$out"; then
  echo "ok   copy floor: $out"
else
  echo "FAIL copy floor: $out"; fails=$((fails + 1))
fi
expect_error "copy floor bad size" "store.*not a size" -- "$COPY_FLOOR" --store lots
expect_error "copy floor tiny store" "at least 1M" -- "$COPY_FLOOR" --store 4K
expect_error "copy floor bad count" "bad number for --pages" -- "$COPY_FLOOR" --pages many

echo "$fails failure(s)"
[[ $fails -eq 0 ]]
