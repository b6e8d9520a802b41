#!/usr/bin/env bash
# Throughput of `uniform` at 25% local memory on one application core, for
# 0 (one plain blocking thread), 1, 8, 64 and 256 uthreads, at injected memory-
# server latencies of 0, 5 and 20 us. Prints a table of ns/op (median of REPEAT)
# and each configuration's speed-up over the blocking thread.
#   bench/uthread_curve.sh [--csv FILE] [WORKING_SET=1G] [OPS=400000] [REPEAT=3]
#   --csv FILE: one row per farmem-bench run appended to FILE (the header when it is new):
#     bench,config,workload,mode,transport,local_pct,working_set_bytes,delay_ns,uthreads,
#     repetition,ns_per_op,faults,evictions
#     (config u=N as in the table; the other columns from farmem-bench's JSON)
set -euo pipefail
CSV="" ARGS=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --csv) [[ $# -ge 2 ]] || { echo "uthread_curve.sh: --csv needs a file" >&2; exit 2; }
      CSV=$(realpath -m -- "$2"); shift 2 ;;
    -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) ARGS+=("$1"); shift ;;
  esac
done
set -- "${ARGS[@]}"
[[ -z $CSV ]] || : >>"$CSV" || { echo "uthread_curve.sh: cannot write --csv file $CSV" >&2; exit 2; }
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
        python3 -c '
import json, os, sys
d = json.load(sys.stdin)
print(d["ns_per_op"])
csv, delay, u, rep = sys.argv[1:5]
if csv:  # the run: its configuration, then what it measured
    new = os.path.getsize(csv) == 0
    with open(csv, "a") as f:
        if new:
            f.write("bench,config,workload,mode,transport,local_pct,working_set_bytes,delay_ns,uthreads,"
                    "repetition,ns_per_op,faults,evictions\n")
        row = ["uthread_curve", "u=" + u, d["workload"], d["mode"], "shm",
               "%.4g" % (100 * d["local_mem_bytes"] / d["working_set_bytes"]), d["working_set_bytes"],
               delay, u, rep, d["ns_per_op"], d["faults"], d["evictions"]]
        f.write(",".join(map(str, row)) + "\n")
' "$CSV" "$d" "$u" "$((r + 1))")")
    done
    med=$(printf "%s\n" "${vals[@]}" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
    [[ -z $base ]] && base=$med
    printf "%14s" "$(python3 -c "print(f'{$med:.0f} ({$base/$med:.1f}x)')")"
  done
  echo
done
