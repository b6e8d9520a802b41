#!/usr/bin/env bash
# What page protection (FARMEM_PROTECT=aead) costs: farmem-bench (uniform by
# default) over tcp to a farmem-server on this machine (or over the embedded
# shm server), --mode sw and hw, protection off and on, interleaved (off, on,
# off, on, ...) so drift hits both alike; prints one line per run and the
# median ops/s of each. docs/benchmarks.md has the numbers.
#   bench/protect_compare.sh [ROUNDS] [WORKING_SET] [OPS] [WORKLOAD uniform|seq|zipf] [TRANSPORT tcp|shm]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3} WS=${2:-512M} OPS=${3:-200000} WORKLOAD=${4:-uniform} TRANSPORT=${5:-tcp}
case $TRANSPORT in tcp | shm) ;; *) echo "protect_compare.sh: transport '$TRANSPORT' is not tcp or shm" >&2; exit 2 ;; esac
BENCH=build/bench/farmem-bench SERVER=build/apps/farmem-server/farmem-server
out=$(mktemp)
"$SERVER" --listen tcp://127.0.0.1:0 --capacity 8G >"$out" 2>&1 &
spid=$!
trap 'kill $spid 2>/dev/null; rm -f "$out"' EXIT
for _ in $(seq 100); do
  port=$(sed -n 's/.*listening on tcp:\/\/127.0.0.1:\([0-9]*\).*/\1/p' "$out")
  [[ -n $port ]] && break
  sleep 0.05
done
backend=tcp://127.0.0.1:$port
[[ $TRANSPORT == shm ]] && backend=shm
echo "workload $WORKLOAD over $TRANSPORT, working set $WS, $OPS ops, $ROUNDS rounds"
declare -A runs
for r in $(seq "$ROUNDS"); do
  for mode in sw hw; do
    for protect in none aead; do
      j=$(FARMEM_BACKEND=$backend FARMEM_FAR_MEM=4G FARMEM_HW_MEM=1G FARMEM_PROTECT=$protect \
          "$BENCH" --mode "$mode" --workload "$WORKLOAD" --working-set "$WS" --local-mem 25% --ops "$OPS" --json 2>/dev/null)
      ops=$(grep -o '"ops_per_sec":[0-9.]*' <<<"$j" | cut -d: -f2)
      p50=$(grep -o '"fault_p50_ns":[0-9]*' <<<"$j" | head -1 | cut -d: -f2)
      grep -q '"verified":true' <<<"$j" || { echo "round $r $mode $protect: not verified: $j"; exit 1; }
      echo "round $r  mode $mode  protect $protect  ops/s $ops  fault p50 ${p50} ns"
      runs[$mode-$protect]+="$ops "
    done
  done
done
median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
for mode in sw hw; do
  off=$(median <<<"${runs[$mode-none]}") on=$(median <<<"${runs[$mode-aead]}")
  echo "median $mode: none $off ops/s, aead $on ops/s, cost $(awk -v a="$off" -v b="$on" 'BEGIN {printf "%.1f%%", (1 - b / a) * 100}')"
done
