#!/usr/bin/env bash
# End to end over dpdk:// with the real farmem-server process and a net_memif
# virtual device between the processes (EAL --no-huge --no-pci): integrity of a
# multi-GiB far array at low local memory, two clients at once (separate memif
# ids, the same far offsets, both exact: their memories are apart), tokens,
# injected packet loss on both sides (retransmission keeps every page exact),
# a client killed mid-run (server healthy, memory reclaimed), the server killed
# mid-run (client ends within 15 s), a silent (stopped) client expired after
# 10 s, a pool with dpdk members surviving one's death, a server without the
# token refused (the token is proven by challenge and response, never sent), clean SIGTERM. Skips (77) without DPDK or
# when EAL cannot start here.
set -uo pipefail
BENCH=$1
SERVER=$2
RAW=${3:-}  # dpdk_raw_client (frame-level checks and fuzz), built with DPDK
source "$(dirname "${BASH_SOURCE[0]}")/harness.sh"
SOCK=/farmem-test-$$  # memif control sockets in the abstract namespace

# start_server NAME URI ARGS...: starts farmem-server; sets SPID. Exits 77 if DPDK is missing here.
start_server() {
  local name=$1 uri=$2
  shift 2
  : >"$tmp/$name.out"  # now, not when the background job gets to it
  nice -n 5 "$SERVER" --listen "$uri" "$@" >"$tmp/$name.out" 2>"$tmp/$name.err" &
  SPID=$!
  pids+=("$SPID")
  for _ in $(seq 200); do
    grep -q "listening on" "$tmp/$name.out" && return 0
    if ! kill -0 "$SPID" 2>/dev/null; then
      if grep -q "built without DPDK" "$tmp/$name.err"; then
        echo "SKIP: this build has no DPDK ($(cat "$tmp/$name.err"))"; exit 77
      fi
      if grep -q "cannot start the DPDK EAL\|cannot create the memif device" "$tmp/$name.err"; then
        echo "SKIP: DPDK EAL cannot start here: $(head -1 "$tmp/$name.err")"; exit 77
      fi
      echo "server did not start:"; cat "$tmp/$name.err"; exit 1
    fi
    sleep 0.05
  done
  echo "server did not start:"; cat "$tmp/$name.err"; exit 1
}

usage_line() {  # asks the server for a usage line (waits up to 5 s for it), prints it
  local before
  before=$(grep -c '"farmem_server":"usage"' "$2")
  kill -USR1 "$1"
  for _ in $(seq 50); do
    [[ $(grep -c '"farmem_server":"usage"' "$2") -gt $before ]] && break
    sleep 0.1
  done
  grep '"farmem_server":"usage"' "$2" | tail -1
}

echo "s3cret-token" >"$tmp/token"
echo "wrong-token" >"$tmp/wrong"
start_server main "dpdk://memif$SOCK-main.sock?clients=4" --capacity 12G --token-file "$tmp/token"
MAIN=$SPID
export FARMEM_TOKEN_FILE=$tmp/token
URI="dpdk://memif$SOCK-main.sock"

# 1. Integrity of a 2 GiB far array at 10% local memory over memif.
start=$(date +%s)
out=$(FARMEM_BACKEND="$URI?id=0" FARMEM_FAR_MEM=3G timeout 400 "$BENCH" --working-set 2G --local-mem 10% \
      --ops 200000 --uthreads 64 --json 2>"$tmp/e1")
if grep -q '"verified":true' <<<"$out" && grep -q '"evictions":[1-9]' <<<"$out"; then
  ok "2 GiB far array at 10% local over dpdk verified ($(( $(date +%s) - start ))s): $out"
else bad "2 GiB over dpdk: $out $(cat "$tmp/e1")"; fi

# 2. Two clients at once on two memif ids of one server, the same far offsets, both exact.
for i in 1 2; do
  FARMEM_BACKEND="$URI?id=$i" FARMEM_FAR_MEM=1G timeout 300 "$BENCH" --working-set 512M --local-mem 25% \
    --ops 100000 --uthreads 32 --seed "$i" --json >"$tmp/c$i" 2>&1 &
  cpid[$i]=$!
done
sleep 3
during=$(usage_line "$MAIN" "$tmp/main.out")
wait "${cpid[1]}"; r1=$?
wait "${cpid[2]}"; r2=$?
if [[ $r1 -eq 0 && $r2 -eq 0 ]] && grep -q '"verified":true' "$tmp/c1" && grep -q '"verified":true' "$tmp/c2" &&
   grep -q '"clients":2,' <<<"$during"; then
  ok "two clients at once (2 sessions while running), both verified"
else bad "two clients: $during $(cat "$tmp/c1" "$tmp/c2")"; fi

# 3. Frame-level checks on memif ids 2 and 3 with a raw client: tokens, isolation,
#    a late duplicate write, range checks, 5 s of fuzzed frames; the server stays up.
if [[ -n $RAW ]]; then
  if timeout 120 "$RAW" "$URI" "$tmp/token" 2 3 5 >"$tmp/raw.out" 2>&1; then
    ok "raw protocol checks and fuzz: $(grep -c '^ok' "$tmp/raw.out") passed ($(grep 'fuzz frames' "$tmp/raw.out"))"
  else bad "raw protocol checks: $(cat "$tmp/raw.out")"; fi
  kill -0 "$MAIN" 2>/dev/null && ok "server alive after malformed frames: $(usage_line "$MAIN" "$tmp/main.out")" ||
    bad "server died on malformed frames"
fi

# 4. Token errors: one line, non-zero, within seconds.
for case in wrong missing; do
  if [[ $case == wrong ]]; then envs=(FARMEM_TOKEN_FILE=$tmp/wrong); else envs=(-u FARMEM_TOKEN_FILE); fi
  start=$(date +%s)
  env "${envs[@]}" FARMEM_BACKEND="$URI?id=3" FARMEM_FAR_MEM=1G timeout 30 "$BENCH" --working-set 64M --ops 1000 >"$tmp/t.out" 2>"$tmp/t.err"
  rc=$?
  took=$(( $(date +%s) - start ))
  if [[ $rc -ne 0 && $rc -ne 124 && $took -le 10 && $(wc -l <"$tmp/t.err") -eq 1 ]] &&
     grep -q "refused us: wrong or missing token.*FARMEM_TOKEN_FILE" "$tmp/t.err"; then
    ok "$case token: $(cat "$tmp/t.err") (${took}s)"
  else bad "$case token: rc=$rc took=${took}s $(cat "$tmp/t.err")"; fi
done

# 5. Capacity is leased as pages are written: the default far memory (64 GiB)
#    works against a 12 GiB server, a server that fills up ends the client with
#    one line; no server on the socket; a bad URI.
out=$(env -u FARMEM_FAR_MEM FARMEM_BACKEND="$URI?id=3" timeout 60 "$BENCH" --working-set 64M --ops 2000 --json 2>&1)
grep -q '"verified":true' <<<"$out" && ok "default far memory (64 GiB) against a 12 GiB server" ||
  bad "default far memory against a 12 GiB server: $out"
start_server small "dpdk://memif$SOCK-small.sock?clients=1" --capacity 64M --token-file "$tmp/token"
FARMEM_BACKEND="dpdk://memif$SOCK-small.sock" timeout 60 "$BENCH" --working-set 256M --local-mem 25% --ops 1000 \
  >/dev/null 2>"$tmp/cap.err"
rc=$?
if [[ $rc -ne 0 && $rc -ne 124 && $(wc -l <"$tmp/cap.err") -eq 1 ]] &&
   grep -q "far memory is full: the memory server dpdk://memif$SOCK-small.sock refused a page: the server is full: 64 MiB of 64 MiB" "$tmp/cap.err"; then
  ok "server full: $(cat "$tmp/cap.err")"
else bad "server full: rc=$rc $(cat "$tmp/cap.err")"; fi
kill -9 "$SPID"
FARMEM_BACKEND="dpdk://memif$SOCK-nobody.sock" timeout 30 "$BENCH" --working-set 64M --ops 1000 >/dev/null 2>"$tmp/nc.err"
rc=$?
if [[ $rc -ne 0 && $(wc -l <"$tmp/nc.err") -eq 1 ]] && grep -q "no farmem-server answered on memif socket" "$tmp/nc.err"; then
  ok "no server: $(cat "$tmp/nc.err")"
else bad "no server: rc=$rc $(cat "$tmp/nc.err")"; fi
FARMEM_BACKEND="dpdk://memif$SOCK-main.sock?queues=1" timeout 30 "$BENCH" --working-set 64M --ops 1000 >/dev/null 2>"$tmp/uri.err"
rc=$?
if [[ $rc -ne 0 ]] && grep -q "queues=1 must be 2-64" "$tmp/uri.err"; then ok "bad URI: $(cat "$tmp/uri.err")"
else bad "bad URI: rc=$rc $(cat "$tmp/uri.err")"; fi

# 6. Injected packet loss (2% of received packets dropped on both sides): still exact.
export FARMEM_DPDK_DROP_PPM=20000  # read by the server and the client
start_server lossy "dpdk://memif$SOCK-lossy.sock?clients=1" --capacity 2G --token-file "$tmp/token"
LOSSY=$SPID
out=$(FARMEM_BACKEND="dpdk://memif$SOCK-lossy.sock" FARMEM_FAR_MEM=1G timeout 300 \
      "$BENCH" --working-set 256M --local-mem 25% --ops 30000 --uthreads 16 --json 2>"$tmp/loss.err")
unset FARMEM_DPDK_DROP_PPM
lossline=$(usage_line "$LOSSY" "$tmp/lossy.out")
if grep -q '"verified":true' <<<"$out" && grep -q '"injected_drops":[1-9]' <<<"$lossline" &&
   grep -q '"duplicates":[1-9]' <<<"$lossline"; then
  ok "2% loss both ways, verified: server $lossline; bench $out"
else bad "loss: $out $(cat "$tmp/loss.err") server: $lossline"; fi
kill "$LOSSY"; wait "$LOSSY" 2>/dev/null

# 7. A client killed mid-run leaves the server healthy and its memory reclaimed.
FARMEM_BACKEND="$URI?id=0" FARMEM_FAR_MEM=1G "$BENCH" --working-set 512M --local-mem 10% --ops 100000000 --no-verify >/dev/null 2>&1 &
victim=$!
sleep 4
during=$(usage_line "$MAIN" "$tmp/main.out")
kill -9 "$victim"; wait "$victim" 2>/dev/null
sleep 1
after=$(usage_line "$MAIN" "$tmp/main.out")
if grep -q '"clients":[1-9]' <<<"$during" && grep -q '"used_bytes":[1-9]' <<<"$during" &&
   grep -q '"clients":0,.*"used_bytes":0,"granted_bytes":0' <<<"$after"; then
  ok "killed client reclaimed (during: $during; after: $after)"
else bad "killed client: during=$during after=$after"; fi
out=$(FARMEM_BACKEND="$URI?id=0" FARMEM_FAR_MEM=1G timeout 120 "$BENCH" --working-set 256M --ops 50000 --json 2>&1)
grep -q '"verified":true' <<<"$out" && ok "server still serves on that memif id after the client died" || bad "after client death: $out"

# 8. A client that stops answering (SIGSTOP: its memif link stays up) is forgotten
#    after 10 s of silence; woken up, it ends with a clear message.
FARMEM_BACKEND="$URI?id=0" FARMEM_FAR_MEM=1G "$BENCH" --working-set 256M --local-mem 25% --ops 100000000 \
  --no-verify >/dev/null 2>"$tmp/stop.err" &
sleeper=$!
sleep 3
kill -STOP "$sleeper"
sleep 13
stopped=$(usage_line "$MAIN" "$tmp/main.out")
kill -CONT "$sleeper"
timeout 20 tail --pid="$sleeper" -f /dev/null
wait "$sleeper"; rc=$?
if [[ $rc -ne 0 ]] && grep -q '"clients":0,.*"granted_bytes":0,.*"expired":[1-9]' <<<"$stopped" &&
   grep -q "no such session" "$tmp/stop.err"; then
  ok "silent client expired ($stopped); woken: $(head -1 "$tmp/stop.err")"
else bad "silent client: rc=$rc $stopped $(cat "$tmp/stop.err")"; kill -9 "$sleeper" 2>/dev/null; fi

# 9. The server killed mid-run: the client ends non-zero with a message within 15 s.
start_server doomed "dpdk://memif$SOCK-doomed.sock?clients=1" --capacity 2G --token-file "$tmp/token"
FARMEM_BACKEND="dpdk://memif$SOCK-doomed.sock" FARMEM_FAR_MEM=1G "$BENCH" --working-set 512M --local-mem 10% \
  --ops 100000000 --no-verify >/dev/null 2>"$tmp/k.err" &
client=$!
sleep 4
kill -9 "$SPID"
start=$(date +%s)
timeout 25 tail --pid="$client" -f /dev/null
wait "$client"; rc=$?
took=$(( $(date +%s) - start ))
if [[ $rc -ne 0 && $took -le 15 ]] && grep -q "memory server dpdk://memif$SOCK-doomed.sock has not answered" "$tmp/k.err"; then
  ok "server killed: client exit $rc after ${took}s: $(head -1 "$tmp/k.err")"
else bad "server killed: rc=$rc took=${took}s $(cat "$tmp/k.err")"; kill -9 "$client" 2>/dev/null; fi

# 10. A pool with dpdk members: two dpdk servers and two tcp ones, ec:2+1 (pieces of
#     half a page over dpdk), one dpdk server killed mid-run: every word
#     verified, the server marked down and its pieces rebuilt on the others.
start_server pa "dpdk://memif$SOCK-pa.sock?clients=1" --capacity 2G --token-file "$tmp/token"
PA=$SPID
start_server pb "dpdk://memif$SOCK-pb.sock?clients=1" --capacity 2G --token-file "$tmp/token"
PB=$SPID
PT=""
for t in 1 2; do
  "$SERVER" --listen tcp://127.0.0.1:0 --capacity 2G --token-file "$tmp/token" >"$tmp/pt$t.out" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do grep -q "listening on" "$tmp/pt$t.out" && break; sleep 0.05; done
  PT+=,$(sed -n 's/.*listening on \(tcp:\/\/127.0.0.1:[0-9]*\).*/\1/p' "$tmp/pt$t.out")
done
( sleep 4; kill -9 "$PB" ) &
killer=$!
out=$(FARMEM_STATS=1 FARMEM_BACKEND="dpdk://memif$SOCK-pa.sock,dpdk://memif$SOCK-pb.sock$PT" FARMEM_REDUNDANCY=ec:2+1 \
      timeout 300 "$BENCH" --working-set 128M --local-mem 25% --ops 200000 --json 2>"$tmp/pool.err")
rc=$?
wait "$killer"
stats=$(grep farmem_stats "$tmp/pool.err")
if [[ $rc -eq 0 ]] && grep -q '"verified":true' <<<"$out" && grep -q '"servers_down":[1-9]' <<<"$stats" &&
   grep -q '"pages_repaired":[1-9]' <<<"$stats" && grep -q "memory server dpdk://memif$SOCK-pb.sock is down" "$tmp/pool.err"; then
  ok "pool of dpdk and tcp servers, ec:2+1, a dpdk server killed: verified, $(grep -o '"pages_repaired":[0-9]*' <<<"$stats")"
else bad "pool with dpdk members (rc $rc): $out $(grep -v 'measured\|farmem_stats' "$tmp/pool.err") $(grep -o '"servers_down":[0-9]*\|"pages_repaired":[0-9]*\|"redundancy_restored":[a-z]*' <<<"$stats" | tr '\n' ' ')"; fi
kill -9 "$PA" 2>/dev/null

# 11. A server without a token cannot prove it holds ours: refused at once, one line.
start_server open "dpdk://memif$SOCK-open.sock?clients=1" --capacity 64M
OPEN=$SPID
FARMEM_BACKEND="dpdk://memif$SOCK-open.sock" timeout 30 "$BENCH" --working-set 64M --ops 1000 >/dev/null 2>"$tmp/open.err"
rc=$?
if [[ $rc -ne 0 && $rc -ne 124 && $(wc -l <"$tmp/open.err") -eq 1 ]] &&
   grep -q "requires no token, so it cannot prove it holds ours" "$tmp/open.err"; then
  ok "a server without our token: $(cat "$tmp/open.err")"
else bad "a server without our token: rc=$rc $(cat "$tmp/open.err")"; fi
kill -9 "$OPEN" 2>/dev/null

# 12. SIGTERM ends the server cleanly.
kill -TERM "$MAIN"
wait "$MAIN"; rc=$?
if [[ $rc -eq 0 ]] && grep -q '"farmem_server":"exit"' "$tmp/main.out"; then ok "SIGTERM: clean exit"
else bad "SIGTERM: rc=$rc $(cat "$tmp/main.err")"; fi

echo "$fails failure(s)"
[[ $fails -eq 0 ]]
