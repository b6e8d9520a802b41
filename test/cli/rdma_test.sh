#!/usr/bin/env bash
# rdma:// from the command line.
#   rdma_test.sh errors BENCH SERVER HAVE_RDMA
#     Runs everywhere: without rdma-core in the build, or without an RDMA device,
#     rdma:// (client and server) ends at once with one line naming the fix and
#     a non-zero exit, never a hang; bad URIs and knobs are named.
#   rdma_test.sh e2e BENCH SERVER HAVE_RDMA
#     Needs an RDMA device (hardware or Soft-RoCE); exits 77 (skip) with the
#     reason when there is none. With one: the real farmem-server over rdma://,
#     integrity at 10% local memory, two clients at once, wrong and missing
#     token, a client killed (memory reclaimed), the server killed (client ends
#     within 15 s), a pool of three rdma servers losing one, SIGTERM. FARMEM_RDMA_TEST_ADDR picks the address to use
#     (default: the first IPv4 address of the netdev an RDMA device is bound to).
set -uo pipefail
MODE=$1
BENCH=$2
SERVER=$3
HAVE_RDMA=$4
source "$(dirname "${BASH_SOURCE[0]}")/harness.sh"

# expect_error NAME PATTERN -- COMMAND...: non-zero exit within 20 s, one stderr line matching PATTERN.
expect_error() {
  local name=$1 pattern=$2
  shift 3
  local start=$SECONDS
  timeout 20 "$@" >"$tmp/out" 2>"$tmp/err"
  local rc=$? lines
  lines=$(wc -l <"$tmp/err")
  if [[ $rc -eq 0 || $rc -eq 124 || $lines -ne 1 ]] || ! grep -qE "$pattern" "$tmp/err"; then
    echo "FAIL $name: rc=$rc, $lines stderr line(s):"; sed 's/^/    /' "$tmp/err"
    fails=$((fails + 1))
  else
    echo "ok   $name ($((SECONDS - start))s): $(cat "$tmp/err")"
  fi
}

# The netdevs RDMA devices are bound to; empty when there is no device.
rdma_devices() { ls /sys/class/infiniband 2>/dev/null; }

small=(--working-set 64M --ops 1000)

if [[ $MODE == errors ]]; then
  expect_error "bad rdma URI" "FARMEM_BACKEND=rdma://nohost is not rdma://HOST:PORT" -- \
    env FARMEM_BACKEND=rdma://nohost "$BENCH" "${small[@]}"
  expect_error "server bad rdma port" "listen rdma://0.0.0.0:70000: port must be 0-65535" -- \
    "$SERVER" --listen rdma://0.0.0.0:70000 --capacity 1G
  expect_error "server, the same listener twice" "listen rdma://0.0.0.0:0 given twice" -- \
    "$SERVER" --listen rdma://0.0.0.0:0 --listen tcp://127.0.0.1:0 --listen rdma://0.0.0.0:0 --capacity 1G
  if [[ $HAVE_RDMA != 1 ]]; then
    expect_error "client, built without rdma-core" "built without rdma-core.*-Drdma=enabled.*tcp://HOST:PORT" -- \
      env FARMEM_BACKEND=rdma://127.0.0.1:7000 "$BENCH" "${small[@]}"
    expect_error "server, built without rdma-core" "built without rdma-core.*-Drdma=enabled" -- \
      "$SERVER" --listen rdma://0.0.0.0:0 --capacity 1G
  else
    expect_error "bad queue depth" "FARMEM_RDMA_QUEUE_DEPTH='3' is out of range" -- \
      env FARMEM_RDMA_QUEUE_DEPTH=3 FARMEM_BACKEND=rdma://127.0.0.1:7000 "$BENCH" "${small[@]}"
    expect_error "signal interval too long" "FARMEM_RDMA_SIGNAL_EVERY=300 exceeds half" -- \
      env FARMEM_RDMA_SIGNAL_EVERY=300 FARMEM_BACKEND=rdma://127.0.0.1:7000 "$BENCH" "${small[@]}"
    if [[ -z $(rdma_devices) ]]; then
      expect_error "client, no RDMA device" \
        "rdma://127.0.0.1:7000: no RDMA device found \(ibv_get_device_list returned none\); use tcp://.*rdma link add rxe0 type rxe netdev" -- \
        env FARMEM_BACKEND=rdma://127.0.0.1:7000 "$BENCH" "${small[@]}"
      expect_error "server, no RDMA device" \
        "listen rdma://0.0.0.0:0: no RDMA device found.*use --listen tcp://HOST:PORT or set up Soft-RoCE" -- \
        "$SERVER" --listen rdma://0.0.0.0:0 --capacity 1G
      expect_error "pool of rdma members, no RDMA device" "rdma://127.0.0.1:7000: no RDMA device found" -- \
        env FARMEM_BACKEND=rdma://127.0.0.1:7000,rdma://127.0.0.1:7001 FARMEM_REDUNDANCY=replicas:2 \
        "$BENCH" "${small[@]}"
    else
      # A device exists: nothing listens on this port, so the client must say so, not hang.
      expect_error "client, no server" "(cannot connect|cannot reach) .*rdma://" -- \
        env FARMEM_BACKEND=rdma://127.0.0.1:1 "$BENCH" "${small[@]}"
    fi
  fi
  echo "$fails failure(s)"
  [[ $fails -eq 0 ]]
  exit
fi

# ---- e2e ----
if [[ $HAVE_RDMA != 1 ]]; then
  echo "SKIP: this build has no rdma-core (meson -Drdma=disabled, or libibverbs-dev/librdmacm-dev missing)"
  exit 77
fi
if [[ -z $(rdma_devices) ]]; then
  echo "SKIP: no RDMA device found (/sys/class/infiniband is empty); the rdma:// end-to-end test needs"
  echo "      RDMA hardware or Soft-RoCE: sudo rdma link add rxe0 type rxe netdev eth0 (see docs/rdma.md)"
  exit 77
fi
ADDR=${FARMEM_RDMA_TEST_ADDR:-}
if [[ -z $ADDR ]]; then
  for dev in $(rdma_devices); do
    for nd in /sys/class/infiniband/"$dev"/ports/*/gid_attrs/ndevs/*; do
      net=$(cat "$nd" 2>/dev/null) || continue
      ADDR=$(ip -4 -o addr show dev "$net" 2>/dev/null | awk '{print $4}' | cut -d/ -f1 | head -1)
      [[ -n $ADDR ]] && break 2
    done
  done
fi
if [[ -z $ADDR ]]; then
  echo "FAIL: RDMA devices ($(rdma_devices | xargs)) but no IPv4 address on their netdevs; set FARMEM_RDMA_TEST_ADDR"
  exit 1
fi
echo "using RDMA devices: $(rdma_devices | xargs), address $ADDR, locked-memory limit $(ulimit -l)"
ulimit -l unlimited 2>/dev/null || true  # registered memory is pinned unless the device pages on demand

start_server() {  # start_server NAME ARGS...: sets PORT and SPID
  local name=$1
  shift
  : >"$tmp/$name.out"  # now, not when the background job gets to it
  "$SERVER" --listen "rdma://$ADDR:0" "$@" >"$tmp/$name.out" 2>"$tmp/$name.err" &
  SPID=$!
  pids+=("$SPID")
  for _ in $(seq 100); do
    PORT=$(sed -n 's/.*listening on rdma:\/\/[^:]*:\([0-9]*\).*/\1/p' "$tmp/$name.out")
    [[ -n $PORT ]] && return 0
    kill -0 "$SPID" 2>/dev/null || break
    sleep 0.05
  done
  echo "FAIL: server did not start:"; cat "$tmp/$name.err"; exit 1
}
usage_line() { kill -USR1 "$1"; sleep 0.3; grep '"farmem_server":"usage"' "$2" | tail -1; }

echo "s3cret-token" >"$tmp/token"
echo "wrong-token" >"$tmp/wrong"
start_server main --capacity 4G --token-file "$tmp/token"
MAIN=$SPID
export FARMEM_TOKEN_FILE=$tmp/token
URI=rdma://$ADDR:$PORT

# 1. Integrity of a far array at 10% local memory, uthreads (many reads in flight) and threads.
out=$(FARMEM_BACKEND=$URI FARMEM_FAR_MEM=1G timeout 300 "$BENCH" --working-set 768M --local-mem 10% \
      --ops 200000 --uthreads 64 --json 2>"$tmp/e1")
if grep -q '"verified":true' <<<"$out" && grep -q '"evictions":[1-9]' <<<"$out"; then
  ok "768 MiB far array at 10% local over rdma verified: $out"
else bad "integrity over rdma: $out $(cat "$tmp/e1")"; fi
out=$(FARMEM_BACKEND=$URI FARMEM_FAR_MEM=1G FARMEM_RDMA_SIGNAL_EVERY=1 timeout 300 "$BENCH" --working-set 256M \
      --local-mem 10% --ops 100000 --threads 2 --json 2>"$tmp/e2")
grep -q '"verified":true' <<<"$out" && ok "threads, every request signaled: verified" || bad "threads: $out $(cat "$tmp/e2")"

# 2. Two clients at once, both exact (each has its own PD, MR and rkey).
for i in 1 2; do
  FARMEM_BACKEND=$URI FARMEM_FAR_MEM=1G timeout 300 "$BENCH" --working-set 512M --local-mem 25% \
    --ops 100000 --uthreads 32 --json >"$tmp/c$i" 2>&1 &
  cpid[$i]=$!
done
wait "${cpid[1]}"; r1=$?
wait "${cpid[2]}"; r2=$?
if [[ $r1 -eq 0 && $r2 -eq 0 ]] && grep -q '"verified":true' "$tmp/c1" && grep -q '"verified":true' "$tmp/c2"; then
  ok "two clients at once, both verified"
else bad "two clients: $(cat "$tmp/c1" "$tmp/c2")"; fi

# 3. Wrong and missing token: refused (rdma_reject with the reason), one line, fast.
for case in wrong missing; do
  if [[ $case == wrong ]]; then envs=(FARMEM_TOKEN_FILE=$tmp/wrong); else envs=(-u FARMEM_TOKEN_FILE); fi
  expect_error "$case token" "refused us: wrong or missing token; set FARMEM_TOKEN_FILE" -- \
    env "${envs[@]}" FARMEM_BACKEND=$URI FARMEM_FAR_MEM=1G "$BENCH" "${small[@]}"
done
expect_error "more than the server has" "MiB free.*FARMEM_FAR_MEM" -- \
  env FARMEM_BACKEND=$URI FARMEM_FAR_MEM=64G "$BENCH" "${small[@]}"

# 4. A client killed mid-run: the server stays healthy and reclaims its memory.
FARMEM_BACKEND=$URI FARMEM_FAR_MEM=1G "$BENCH" --working-set 512M --local-mem 10% --ops 100000000 --no-verify \
  >/dev/null 2>&1 &
victim=$!
sleep 3
during=$(usage_line "$MAIN" "$tmp/main.out")
kill -9 "$victim"; wait "$victim" 2>/dev/null
sleep 2
after=$(usage_line "$MAIN" "$tmp/main.out")
if grep -q '"clients":[1-9]' <<<"$during" && grep -q '"clients":0,.*"used_bytes":0,"granted_bytes":0' <<<"$after"; then
  ok "killed client reclaimed (during: $during; after: $after)"
else bad "killed client: during=$during after=$after"; fi
out=$(FARMEM_BACKEND=$URI FARMEM_FAR_MEM=1G timeout 120 "$BENCH" --working-set 256M --ops 50000 --json 2>&1)
grep -q '"verified":true' <<<"$out" && ok "server still serves after the client died" || bad "after client death: $out"

# 5. The server killed mid-run: the client ends non-zero with a message within 15 s.
start_server doomed --capacity 2G
FARMEM_BACKEND=rdma://$ADDR:$PORT FARMEM_FAR_MEM=1G "$BENCH" --working-set 512M --local-mem 10% \
  --ops 100000000 --no-verify >/dev/null 2>"$tmp/k.err" &
client=$!
sleep 3
kill -9 "$SPID"
start=$SECONDS
timeout 20 tail --pid="$client" -f /dev/null
wait "$client"; rc=$?
took=$((SECONDS - start))
if [[ $rc -ne 0 && $took -le 15 ]] && grep -q "memory server rdma://$ADDR:$PORT" "$tmp/k.err"; then
  ok "server killed: client exit $rc after ${took}s: $(head -1 "$tmp/k.err")"
else bad "server killed: rc=$rc took=${took}s $(cat "$tmp/k.err")"; kill -9 "$client" 2>/dev/null; fi

# 6. A pool of three rdma servers, ec:2+1 (half-page pieces through each queue
#    pair's staging buffer), one killed mid-run: every word verified, the
#    server marked down and its pieces rebuilt on the others.
POOL=""
for i in 1 2 3; do
  start_server "pool$i" --capacity 1G --token-file "$tmp/token"
  POOL+="${POOL:+,}rdma://$ADDR:$PORT"
  PPID_LAST=$SPID
done
( sleep 4; kill -9 "$PPID_LAST" ) &
killer=$!
out=$(FARMEM_STATS=1 FARMEM_BACKEND=$POOL FARMEM_REDUNDANCY=ec:2+1 FARMEM_FAR_MEM=512M timeout 300 "$BENCH" \
      --working-set 256M --local-mem 10% --ops 200000 --uthreads 16 --json 2>"$tmp/pool.err")
rc=$?
wait "$killer"
stats=$(grep farmem_stats "$tmp/pool.err")
if ((rc == 0)) && grep -q '"verified":true' <<<"$out" && grep -q '"servers_down":[1-9]' <<<"$stats" &&
   grep -q '"pages_repaired":[1-9]' <<<"$stats"; then
  ok "pool of three rdma servers, ec:2+1, one killed: verified, $(grep -o '"pages_repaired":[0-9]*' <<<"$stats")"
else bad "rdma pool: rc $rc $out $(grep -v farmem_stats "$tmp/pool.err" | tail -3)"; fi

# 7. SIGTERM ends the server cleanly.
kill -TERM "$MAIN"
wait "$MAIN"; rc=$?
if [[ $rc -eq 0 ]] && grep -q '"farmem_server":"exit"' "$tmp/main.out"; then ok "SIGTERM: clean exit"
else bad "SIGTERM: rc=$rc"; fi

echo "$fails failure(s)"
[[ $fails -eq 0 ]]
