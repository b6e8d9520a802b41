#!/usr/bin/env bash
# End to end: a far-memory pool over real farmem-server processes on loopback.
# A 2 GiB far array at 10% local memory with ec:2+1 over 4 servers, one killed
# with SIGKILL mid-run, and with replicas:2 over 3, one stopped with SIGSTOP
# past the timeout: every word verified, the pool rebuilds the lost pieces.
# An unmodified program (sort) under farmem-run with replicas:2 over 3 servers,
# one killed mid-run: byte-identical output. Bad pools: one line, non-zero exit.
# Capacity: three small servers hold what one cannot; a full pool: one line.
# (The smaller failure cases also run under the sanitizers: test/far/pool_test.cc.)
set -uo pipefail
BENCH=$1
SERVER=$2
RUN=${3:-}
source "$(dirname "${BASH_SOURCE[0]}")/harness.sh"

# start_servers N [CAPACITY]: N farmem-servers on free ports; sets URIS (comma-separated) and SPIDS.
start_servers() {
  URIS=""
  SPIDS=()
  for i in $(seq "$1"); do
    : >"$tmp/s$i.out"  # now: the last call's server (gone) must not show its port
    "$SERVER" --listen tcp://127.0.0.1:0 --capacity "${2:-64G}" >"$tmp/s$i.out" 2>"$tmp/s$i.err" &
    SPIDS+=($!)
    pids+=($!)
    local port=""
    for _ in $(seq 100); do
      port=$(sed -n 's/.*listening on tcp:\/\/127.0.0.1:\([0-9]*\).*/\1/p' "$tmp/s$i.out")
      [[ -n $port ]] && break
      sleep 0.05
    done
    [[ -n $port ]] || { echo "server did not start: $(cat "$tmp/s$i.err")"; exit 1; }
    URIS+="${URIS:+,}tcp://127.0.0.1:$port"
  done
}
stop_servers() { for p in "${SPIDS[@]}"; do kill -9 "$p" 2>/dev/null; wait "$p" 2>/dev/null; done; }

# survive NAME SERVERS REDUNDANCY TIMEOUT SAYS ACTION: 2 GiB at 10% local over
# SERVERS servers; ACTION (a shell command on $S, the second server's pid) runs
# 8 s in; the run must verify every word, report a server down and pages
# rebuilt, and its stderr must say SAYS.
survive() {
  local name=$1 n=$2 redundancy=$3 timeout=$4 says=$5 action=$6
  start_servers "$n"
  ( S=${SPIDS[1]}; sleep 8; eval "$action" ) &
  local actor=$!
  out=$(FARMEM_STATS=1 FARMEM_BACKEND=$URIS FARMEM_REDUNDANCY=$redundancy FARMEM_FAR_MEM=3G \
        FARMEM_SERVER_TIMEOUT=$timeout timeout 500 "$BENCH" --working-set 2G --local-mem 10% --ops 150000 \
        --uthreads 32 --json 2>"$tmp/e1")
  local rc=$?
  wait $actor
  local stats
  stats=$(grep farmem_stats "$tmp/e1")
  # At least the server acted on is down (a slow one may be taken for lost too).
  if [[ $rc -eq 0 ]] && grep -q '"verified":true' <<<"$out" && grep -q '"servers_down":[1-9]' <<<"$stats" &&
     grep -q '"pages_repaired":[1-9]' <<<"$stats" && grep -q "$says" "$tmp/e1"; then
    ok "2 GiB at 10% local, $name: verified, $(grep -o '"pages_repaired":[0-9]*' <<<"$stats")"
  else bad "$name (rc $rc): $out $(grep -v measured "$tmp/e1")"; fi
  stop_servers
}

# 1. ec:2+1 over 4 servers, one killed mid-run; replicas:2 over 3, one stopped
#    past the timeout and then let go (it comes back as a new, empty server).
survive "ec:2+1 over 4 servers, one killed" 4 ec:2+1 5s "is down" 'kill -9 $S'
survive "replicas:2 over 3 servers, one stopped" 3 replicas:2 1s "no answer within 1000 ms" \
  'kill -STOP $S; sleep 6; kill -CONT $S'

# 2. An unmodified program under farmem-run, replicas:2 over 3 servers, one killed mid-run.
if [[ -n $RUN ]]; then
  seq 1 1500000 | shuf --random-source=<(yes) >"$tmp/nums.txt"
  want=$(LC_ALL=C sort -n "$tmp/nums.txt" | md5sum)
  start_servers 3
  ( sleep 3; kill -9 "${SPIDS[2]}" ) &
  killer=$!
  got=$(FARMEM_REDUNDANCY=replicas:2 timeout 500 "$RUN" --local-mem 24M --backend "$URIS" --stats -- \
        env LC_ALL=C sort -n -S 1G --parallel=1 "$tmp/nums.txt" 2>"$tmp/e2" | md5sum)
  wait $killer
  if [[ $got == "$want" ]] && grep -q 'is down' "$tmp/e2" && grep -q '"servers_down":1' "$tmp/e2"; then
    ok "sort under farmem-run, replicas:2 over 3 servers, one killed: identical output"
  else bad "sort under farmem-run with a server killed: $got vs $want; $(tail -3 "$tmp/e2")"; fi
  stop_servers
fi

# 3. Bad pools: one line naming the problem, non-zero exit, no hang.
start_servers 2
check_error() {  # NAME PATTERN ENV...
  local name=$1 pattern=$2
  shift 2
  err=$(env "$@" timeout 60 "$BENCH" --working-set 64M --ops 1000 2>&1 >/dev/null)
  rc=$?
  if [[ $rc -ne 0 && $rc -ne 124 && $(wc -l <<<"$err") -eq 1 ]] && grep -q -- "$pattern" <<<"$err"; then
    ok "$name: $err"
  else bad "$name (rc $rc): $err"; fi
}
check_error "ec:2+1 over 2 servers" "add servers or lower the redundancy" FARMEM_BACKEND=$URIS FARMEM_REDUNDANCY=ec:2+1
check_error "ec:3+1" "K must be 1, 2, 4 or 8" FARMEM_BACKEND=$URIS FARMEM_REDUNDANCY=ec:3+1
check_error "shm in a pool" "cannot be a pool member" FARMEM_BACKEND=shm,$URIS
check_error "an empty entry" "has an empty entry" "FARMEM_BACKEND=$URIS,"
check_error "an unreachable server" "cannot connect to the memory server tcp://127.0.0.1:1" \
  FARMEM_BACKEND=$URIS,tcp://127.0.0.1:1 FARMEM_REDUNDANCY=replicas:2
check_error "a bad timeout" "FARMEM_SERVER_TIMEOUT" FARMEM_BACKEND=$URIS FARMEM_SERVER_TIMEOUT=soon
stop_servers

# 4. Capacity adds up, less the redundancy: three 64 MiB servers with ec:2+1 hold
#    a 96 MiB far array (more than any one of them could), with the default
#    FARMEM_FAR_MEM; a 256 MiB array fills them: one line, exit 1.
start_servers 3 64M
out=$(FARMEM_BACKEND=$URIS FARMEM_REDUNDANCY=ec:2+1 timeout 120 "$BENCH" --working-set 96M --local-mem 32M \
      --ops 20000 --json 2>&1)
grep -q '"verified":true' <<<"$out" && ok "three 64 MiB servers with ec:2+1 hold a 96 MiB far array" ||
  bad "three 64 MiB servers with ec:2+1: $out"
err=$(FARMEM_BACKEND=$URIS FARMEM_REDUNDANCY=ec:2+1 timeout 120 "$BENCH" --working-set 256M --local-mem 32M \
      --ops 1000 2>&1 >/dev/null)
rc=$?
if [[ $rc -ne 0 && $rc -ne 124 && $(wc -l <<<"$err") -eq 1 ]] &&
   grep -q "far memory is full: the memory server tcp://127.0.0.1:[0-9]* refused a page: the server is full" <<<"$err"; then
  ok "a full pool: $err"
else bad "a full pool (rc $rc): $err"; fi
stop_servers

exit $((fails > 0))
