#!/usr/bin/env bash
# bench/sweep.sh -- the data for the lead figure in one run: bench/swap_compare.sh
# --hw at local-memory fractions from 10% to 100% of the working set, every run
# appended to one CSV, then bench/plot.py draws throughput (normalized to
# all-local) against the fraction for farmem sw, farmem hw and Linux swap.
# Requires root (swap_compare.sh sets up zram and a memory cgroup).
# usage: bench/sweep.sh [--csv FILE] [--png FILE] [--pcts "10 25 50 75 100"] [swap_compare.sh options...]
set -euo pipefail
DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
CSV=sweep.csv PNG=sweep.png PCTS="10 25 50 75 100"
ARGS=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --csv) CSV=$2; shift 2 ;;
    --png) PNG=$2; shift 2 ;;
    --pcts) PCTS=$2; shift 2 ;;
    -h|--help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) ARGS+=("$1"); shift ;;
  esac
done
for p in $PCTS; do
  [[ $p =~ ^[0-9]+$ && $p -ge 1 && $p -le 100 ]] || { echo "sweep.sh: --pcts: $p is not a percentage 1-100" >&2; exit 2; }
done
: >"$CSV"
for p in $PCTS; do
  echo "sweep.sh: local memory $p%" >&2
  "$DIR/swap_compare.sh" --hw --local-pct "$p" --csv "$CSV" "${ARGS[@]}"
done
/usr/bin/python3 "$DIR/plot.py" "$CSV" --log -o "$PNG"
