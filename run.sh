#!/usr/bin/env bash
# The main job: install what is missing, build, and run far memory on the
# embedded default (a local memory server process, no network) next to plain
# local memory, printing throughput, pages moved and local vs far bytes.
#   ./run.sh [WORKING_SET] [LOCAL_MEM]      (defaults: 1G and 25%)
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh
ws=${1:-1G}
local_mem=${2:-25%}
bench=build/bench/farmem-bench
echo
echo "==> far memory (software-paged, embedded shm memory server), ${local_mem} of ${ws} local"
for w in uniform zipf seq; do
  "$bench" --workload "$w" --mode sw --working-set "$ws" --local-mem "$local_mem" --ops 2000000
done
echo
echo "==> the ideal: the same workloads in plain local memory"
for w in uniform zipf seq; do
  "$bench" --workload "$w" --mode local --working-set "$ws" --ops 2000000
done
echo
echo "Compare with Linux swap (root): bench/swap_compare.sh   Details: docs/benchmarks.md"
