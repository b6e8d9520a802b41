#!/usr/bin/env bash
# Throughput of `uniform` at 25% local memory on one application core, for
# 0 (one plain blocking thread), 1, 8, 64 and 256 uthreads, at injected memory-
# server latencies of 0, 5 and 20 us. Prints a table of ns/op (median of REPEAT)
# and each configuration's speed-up over the blocking thread.
#   bench/uthread_curve.sh [WORKING_SET=1G] [OPS=400000] [REPEAT=3]
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH=${BENCH:-build/bench/farmem-bench}
ws=${1:-1G}; ops=${2:-400000}; repeat=${3:-3}
printf "%-10s" "delay_ns"; for u in 0 1 8 64 256; do printf "%14s" "u=$u"; done; echo
for d in 0 5000 20000; do
  printf "%-10s" "$d"
  base=""
  for u in 0 1 8 64 256; do
    vals=()
    for ((r = 0; r < repeat; r++)); do
      vals+=("$(FARMEM_SHM_DELAY_NS=$d "$BENCH" --working-set "$ws" --ops "$ops" --uthreads "$u" --json |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["ns_per_op"])')")
    done
    med=$(printf "%s\n" "${vals[@]}" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
    [[ -z $base ]] && base=$med
    printf "%14s" "$(python3 -c "print(f'{$med:.0f} ({$base/$med:.1f}x)')")"
  done
  echo
done
