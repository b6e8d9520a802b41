#!/usr/bin/env bash
# bench/plot.py draws the throughput-vs-local-memory figure from a CSV in the
# format bench/swap_compare.sh --csv writes (a small one made here: the real
# sweep needs root, zram and minutes), and a file that is not one gets one
# line and status 2. Skipped (77) where python3-matplotlib is not installed.
# Usage: plot_test.sh SOURCE_DIR
set -uo pipefail
SRC=$1
PY=/usr/bin/python3
source "$(dirname "$0")/harness.sh"
if ! $PY -c 'import matplotlib' 2>/dev/null; then
  echo "skipped: python3-matplotlib is not installed (scripts/setup.sh --plot installs it)"
  exit 77
fi
csv=$tmp/r.csv
echo "bench,workload,mode,transport,local_pct,working_set_bytes,threads,repetition,ns_per_op,ops_per_sec,faults,evictions,swapout_bytes" >"$csv"
for pct in 10 25 50 100; do
  for rep in 1 2; do
    echo "swap_compare,uniform,local,none,$pct,2147483648,1,$rep,100,10000000,,," >>"$csv"
    echo "swap_compare,uniform,farmem-sw,shm,$pct,2147483648,1,$rep,$((5000 / pct)),$((pct * 90000)),1,1," >>"$csv"
    echo "swap_compare,uniform,farmem-hw,shm,$pct,2147483648,1,$rep,$((9000 / pct)),$((pct * 60000)),1,1," >>"$csv"
    echo "swap_compare,uniform,swap,zram,$pct,2147483648,1,$rep,$((20000 / pct)),$((pct * 20000)),,,4096" >>"$csv"
  done
done
out=$($PY "$SRC/bench/plot.py" "$csv" -o "$tmp/fig.png" 2>&1)
[[ $(head -c 8 "$tmp/fig.png" 2>/dev/null | od -An -tx1 | tr -d ' \n') == 89504e470d0a1a0a ]] &&
  (($(stat -c %s "$tmp/fig.png") > 10000)) && ok "plot.py wrote a PNG: $out" || bad "plot.py: $out"
echo "a,b" >"$tmp/bad.csv"
err=$($PY "$SRC/bench/plot.py" "$tmp/bad.csv" -o "$tmp/bad.png" 2>&1); rc=$?
((rc == 2)) && [[ $(wc -l <<<"$err") == 1 ]] && ok "not a benchmark CSV: $err" || bad "bad csv: rc $rc: $err"
exit $((fails > 0))
