#!/usr/bin/env bash
# One farmem-server with several --listen at once: tcp:// plus dpdk:// (a
# net_memif link, EAL --no-huge --no-pci) served from one process. A client
# over each transport at the same time, both exact; the one --capacity shared
# across transports and leased as pages are written (a client on one holding
# most of it ends a client on the other with "far memory is full", both ways,
# and its memory comes back when it is killed); usage lines per listener plus one for the server;
# bad and duplicate --listen (exit 2, one line, nothing started); a listener
# that cannot start (exit 1, one line naming it, nothing served); SIGTERM
# ends every listener and the process exits 0. Without DPDK in the build (or
# where EAL cannot start) the dpdk part is skipped with the reason and the
# same checks run over two tcp:// listeners.
set -uo pipefail
BENCH=$1
SERVER=$2
source "$(dirname "${BASH_SOURCE[0]}")/harness.sh"
SOCK=/farmem-multi-$$  # memif control socket in the abstract namespace

# expect_error NAME RC PATTERN -- COMMAND...: an exit status matching RC (a
# regex) within 20 s, one stderr line matching PATTERN, nothing served (no
# "serving" line) and, when the status is 2, nothing started (no "listening on").
expect_error() {
  local name=$1 want=$2 pattern=$3
  shift 4
  timeout 20 "$@" >"$tmp/out" 2>"$tmp/err"
  local rc=$? lines
  lines=$(wc -l <"$tmp/err")
  if [[ ! $rc =~ ^($want)$ || $lines -ne 1 ]] || ! grep -qE "$pattern" "$tmp/err" ||
     { [[ $rc -eq 2 ]] && grep -q "listening on" "$tmp/out"; } || grep -q "serving" "$tmp/out"; then
    echo "FAIL $name: rc=$rc (want $want), $lines stderr line(s):"; sed 's/^/    /' "$tmp/err" "$tmp/out"
    fails=$((fails + 1))
  else
    echo "ok   $name: exit $rc: $(cat "$tmp/err")"
  fi
}

# 1. Every --listen is checked before any starts; a listener that cannot start stops them all.
expect_error "the same --listen twice" 2 "^farmem-server: --listen tcp://127.0.0.1:0 given twice$" -- \
  "$SERVER" --listen tcp://127.0.0.1:0 --listen "dpdk://memif$SOCK-x.sock" --listen tcp://127.0.0.1:0 --capacity 1G
expect_error "a bad --listen after a good one" 2 "^farmem-server: --listen pigeon://x is not tcp://" -- \
  "$SERVER" --listen tcp://127.0.0.1:0 --listen pigeon://x --capacity 1G
expect_error "a bad port after a good one" 2 "^farmem-server: --listen tcp://127.0.0.1:99999: port must be 0-65535$" -- \
  "$SERVER" --listen tcp://127.0.0.1:0 --listen tcp://127.0.0.1:99999 --capacity 1G
expect_error "two dpdk:// listeners" 2 "listen dpdk://memif$SOCK-b.sock: (one dpdk:// listener per farmem-server|.*built without DPDK)" -- \
  "$SERVER" --listen "dpdk://memif$SOCK-a.sock" --listen "dpdk://memif$SOCK-b.sock" --capacity 1G
"$SERVER" --listen tcp://127.0.0.1:0 --capacity 1G >"$tmp/busy.out" 2>&1 &
busy=$!
pids+=("$busy")
for _ in $(seq 100); do
  BUSY=$(sed -n 's/.*listening on tcp:\/\/127.0.0.1:\([0-9]*\).*/\1/p' "$tmp/busy.out")
  [[ -n $BUSY ]] && break
  sleep 0.05
done
expect_error "a tcp port in use" 1 "^farmem-server: cannot listen on tcp://127.0.0.1:$BUSY: Address already in use$" -- \
  "$SERVER" --listen tcp://127.0.0.1:0 --listen "tcp://127.0.0.1:$BUSY" --capacity 1G
kill "$busy"; wait "$busy" 2>/dev/null
if [[ -z $(ls /sys/class/infiniband 2>/dev/null) ]]; then  # rdma:// cannot start here: the whole server says so
  expect_error "rdma:// without a device next to tcp://" '1|2' "^farmem-server: --listen rdma://0.0.0.0:0: " -- \
    "$SERVER" --listen tcp://127.0.0.1:0 --listen rdma://0.0.0.0:0 --capacity 1G
fi

# start_server ARGS...: starts farmem-server with the given --listen, waits for
# "serving 2 listeners"; sets MAIN. Returns 77 when DPDK cannot run here.
start_server() {
  : >"$tmp/main.out"
  "$SERVER" "$@" >"$tmp/main.out" 2>"$tmp/main.err" &
  MAIN=$!
  pids+=("$MAIN")
  for _ in $(seq 200); do
    grep -q "serving 2 listeners" "$tmp/main.out" && return 0
    if ! kill -0 "$MAIN" 2>/dev/null; then
      wait "$MAIN"
      if grep -q "built without DPDK\|cannot start the DPDK EAL\|cannot create the memif device" "$tmp/main.err"; then
        DPDK_WHY=$(grep -m1 "built without DPDK\|cannot start the DPDK EAL\|cannot create the memif device" "$tmp/main.err")
        return 77
      fi
      echo "server did not start:"; cat "$tmp/main.err"; exit 1
    fi
    sleep 0.05
  done
  echo "server did not start:"; cat "$tmp/main.out" "$tmp/main.err"; exit 1
}

echo "s3cret-token" >"$tmp/token"
export FARMEM_TOKEN_FILE=$tmp/token
CAP=(--capacity 1G --token-file "$tmp/token")
if start_server --listen tcp://127.0.0.1:0 --listen "dpdk://memif$SOCK.sock?clients=2" "${CAP[@]}"; then
  SECOND=dpdk
  SECOND_URI="dpdk://memif$SOCK.sock?clients=2"
  SECOND_BACKEND="dpdk://memif$SOCK.sock?id="  # + memif id
else
  echo "SKIP (dpdk part): $DPDK_WHY; the same checks run over a second tcp:// listener"
  start_server --listen tcp://127.0.0.1:0 --listen tcp://127.0.0.2:0 "${CAP[@]}"
  SECOND=tcp2
  SECOND_URI=tcp://127.0.0.2:$(sed -n 's/.*listening on tcp:\/\/127.0.0.2:\([0-9]*\).*/\1/p' "$tmp/main.out")
  SECOND_BACKEND=$SECOND_URI
fi
PORT=$(sed -n 's/.*listening on tcp:\/\/127.0.0.1:\([0-9]*\).*/\1/p' "$tmp/main.out")
TCP=tcp://127.0.0.1:$PORT
second_backend() { if [[ $SECOND == dpdk ]]; then echo "$SECOND_BACKEND$1"; else echo "$SECOND_BACKEND"; fi; }
ok "one process listens on $TCP and $SECOND_URI: $(grep "serving" "$tmp/main.out")"

# usage: SIGUSR1, waits for the server's line and both listeners' lines; sets TOTAL, L_TCP, L_SECOND.
usage() {
  local before
  before=$(grep -c '"farmem_server":"usage"' "$tmp/main.out")
  kill -USR1 "$MAIN"
  for _ in $(seq 50); do
    [[ $(grep -c '"farmem_server":"usage"' "$tmp/main.out") -ge $((before + 3)) ]] && break
    sleep 0.1
  done
  TOTAL=$(grep '"farmem_server":"usage","listeners":2,' "$tmp/main.out" | tail -1)
  L_TCP=$(grep -F "\"farmem_server\":\"usage\",\"listener\":\"$TCP\"," "$tmp/main.out" | tail -1)
  L_SECOND=$(grep -F "\"listener\":\"$SECOND_URI\"," "$tmp/main.out" | grep '"farmem_server":"usage"' | tail -1)
}

# wait_clients N: until the server's usage line says N clients (up to 20 s).
wait_clients() {
  for _ in $(seq 40); do
    usage
    grep -q "\"clients\":$1," <<<"$TOTAL" && return 0
    sleep 0.4
  done
  return 1
}

# 2. A client over each listener at the same time, the same far offsets, both
#    exact. The slower one (dpdk) starts first; the tcp one once its session is up.
start=$SECONDS
FARMEM_BACKEND=$(second_backend 0) FARMEM_FAR_MEM=1G timeout 300 "$BENCH" --working-set 384M --local-mem 25% \
  --ops 60000 --uthreads 32 --seed 2 --json >"$tmp/c2" 2>&1 &
c2=$!
pids+=("$c2")
wait_clients 1
FARMEM_BACKEND=$TCP FARMEM_FAR_MEM=1G timeout 300 "$BENCH" --working-set 384M --local-mem 25% \
  --ops 60000 --uthreads 32 --seed 1 --json >"$tmp/c1" 2>&1 &
c1=$!
pids+=("$c1")
wait_clients 2
for _ in $(seq 50); do  # until both have written far pages
  grep -q '"used_bytes":[1-9]' <<<"$L_TCP" && grep -q '"used_bytes":[1-9]' <<<"$L_SECOND" && break
  sleep 0.2
  usage
done
during_total=$TOTAL during_tcp=$L_TCP during_second=$L_SECOND
wait "$c1"; r1=$?
wait "$c2"; r2=$?
secs() { sed -n 's/.*"seconds":\([0-9.]*\).*/\1/p' "$1"; }
if [[ $r1 -eq 0 && $r2 -eq 0 ]] && grep -q '"verified":true' "$tmp/c1" && grep -q '"verified":true' "$tmp/c2"; then
  ok "a client over tcp and one over $SECOND at once, both verified ($((SECONDS - start))s; bench seconds: tcp $(secs "$tmp/c1"), $SECOND $(secs "$tmp/c2"))"
else bad "clients over both listeners: rc=$r1/$r2 $(cat "$tmp/c1" "$tmp/c2")"; fi
if grep -q '"clients":2,"granted_bytes":[1-9][0-9]*,"capacity_bytes":1073741824}' <<<"$during_total" &&
   grep -q '"clients":1,.*"used_bytes":[1-9][0-9]*,"granted_bytes":[1-9][0-9]*,"capacity_bytes":1073741824' <<<"$during_tcp" &&
   grep -q '"clients":1,.*"used_bytes":[1-9][0-9]*,"granted_bytes":[1-9][0-9]*,"capacity_bytes":1073741824' <<<"$during_second"; then
  ok "usage while both ran: $during_total / $during_tcp / $during_second"
else bad "usage while both ran: total=$during_total tcp=$during_tcp second=$during_second"; fi

# 3. One capacity for all listeners, leased as pages are written: a client on one
#    transport holds most of the 1 GiB, one on the other that needs more than is
#    left ends with the one-line "far memory is full"; when the holder is killed
#    its memory comes back and the other fits.
# granted: the server's granted_bytes in its newest usage line.
granted() { sed -n 's/.*"granted_bytes":\([0-9]*\).*/\1/p' <<<"$TOTAL"; }
# capacity_check NAME HOLDER_BACKEND OTHER_BACKEND OTHER_URI
capacity_check() {
  local name=$1 holder_be=$2 other_be=$3 other_uri=$4
  FARMEM_BACKEND=$holder_be "$BENCH" --working-set 768M --local-mem 64M --ops 1000000000 --no-verify \
    >/dev/null 2>"$tmp/holder.err" &
  local holder=$!
  pids+=("$holder")
  local held=0
  for _ in $(seq 150); do
    usage
    held=$(granted); (( held >= 600 << 20 )) && break
    sleep 0.2
  done
  if (( held < 600 << 20 )); then
    bad "$name: the holder never held 600 MiB: $TOTAL $(cat "$tmp/holder.err")"; kill -9 "$holder"; return
  fi
  FARMEM_BACKEND=$other_be timeout 60 "$BENCH" --working-set 512M --local-mem 32M --ops 1000 \
    >/dev/null 2>"$tmp/refused.err"
  local rc=$?
  if [[ $rc -ne 0 && $rc -ne 124 ]] &&
     grep -q "far memory is full: the memory server $other_uri.* refused a page: the server is full: 1024 MiB of 1024 MiB are in use by 2 sessions" "$tmp/refused.err"; then
    ok "$name: $(head -1 "$tmp/refused.err")"
  else bad "$name: rc=$rc $(cat "$tmp/refused.err")"; fi
  kill -9 "$holder"; wait "$holder" 2>/dev/null
  if wait_clients 0 && grep -q '"granted_bytes":0,' <<<"$TOTAL"; then
    out=$(FARMEM_BACKEND=$other_be timeout 120 "$BENCH" --working-set 512M --local-mem 32M --ops 5000 --json 2>&1)
    grep -q '"verified":true' <<<"$out" && ok "$name: the holder killed, its memory is back: $TOTAL; the other fits" ||
      bad "$name: after the holder was killed: $out"
  else bad "$name: the killed holder's memory was not reclaimed: $TOTAL"; fi
}
second_shown() { if [[ $SECOND == dpdk ]]; then echo "dpdk://memif$SOCK.sock"; else echo "$SECOND_URI"; fi; }
capacity_check "tcp holds most, $SECOND refused" "$TCP" "$(second_backend 1)" "$(second_shown)"
capacity_check "$SECOND holds most, tcp refused" "$(second_backend 1)" "$TCP" "$TCP"

# 4. SIGTERM stops every listener; the process exits 0 after one exit line per
#    listener and one for the server.
kill -TERM "$MAIN"
timeout 20 tail --pid="$MAIN" -f /dev/null
wait "$MAIN"; rc=$?
exits=$(grep -c '"farmem_server":"exit"' "$tmp/main.out")
last=$(tail -1 "$tmp/main.out")
if [[ $rc -eq 0 && $exits -eq 3 ]] && grep -q '"farmem_server":"exit","listeners":2,"clients":0,"granted_bytes":0,' <<<"$last" &&
   [[ ! -s $tmp/main.err ]]; then
  ok "SIGTERM: exit 0, $exits exit lines, last: $last"
else bad "SIGTERM: rc=$rc, $exits exit lines; $(cat "$tmp/main.out" "$tmp/main.err")"; fi

echo "$fails failure(s)"
[[ $fails -eq 0 ]]
