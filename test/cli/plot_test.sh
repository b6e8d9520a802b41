#!/usr/bin/env bash
# bench/plot.py draws the throughput-vs-local-memory figure from a CSV in the
# format bench/swap_compare.sh --csv writes (a small one made here: the real
# sweep needs root, zram and minutes), fault-latency CDFs from the CSV
# farmem-bench --latency-csv writes (made by a short run of farmem-bench over
# shm, plus a second transport's rows), and bars from a CSV in the format
# bench/apps_compare.sh --out writes; a file that is not one, a mix of kinds,
# and a bad number get one line and status 2. Skipped (77) where
# python3-matplotlib is not installed.
# Usage: plot_test.sh SOURCE_DIR [FARMEM_BENCH]
set -uo pipefail
SRC=$1 BENCH=${2:-}
PY=/usr/bin/python3
source "$(dirname "$0")/harness.sh"
if ! $PY -c 'import matplotlib' 2>/dev/null; then
  echo "skipped: python3-matplotlib is not installed (scripts/setup.sh --plot installs it)"
  exit 77
fi
is_png() {  # FILE: a PNG of some size
  [[ $(head -c 8 "$1" 2>/dev/null | od -An -tx1 | tr -d ' \n') == 89504e470d0a1a0a ]] && (($(stat -c %s "$1") > 10000))
}

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
is_png "$tmp/fig.png" && ok "plot.py wrote a PNG: $out" || bad "plot.py: $out"
# Fault-latency CDFs: farmem-bench's own CSV (a short run over shm) and tcp rows made here.
lat=$tmp/lat.csv
if [[ -n $BENCH ]]; then
  "$BENCH" --working-set 32M --local-mem 25% --ops 50000 --no-verify --latency-csv "$lat" >/dev/null 2>"$tmp/bench.err" ||
    bad "farmem-bench --latency-csv: $(cat "$tmp/bench.err")"
  $PY - "$lat" <<'PYEOF' && ok "farmem-bench --latency-csv: a CDF that ends at 1" || bad "latency CSV: $(head -3 "$lat")"
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
f = [float(r["cumulative_fraction"]) for r in rows]
lat = [int(r["latency_ns"]) for r in rows]
assert rows and rows[0]["transport"] == "shm" and rows[0]["mode"] == "sw" and rows[0]["local_pct"] == "25", rows[:1]
assert f == sorted(f) and abs(f[-1] - 1) < 1e-9 and lat == sorted(lat), (f, lat)
assert sum(int(r["count"]) for r in rows) > 0
PYEOF
  err=$("$BENCH" --mode local --latency-csv "$tmp/x.csv" 2>&1); rc=$?
  ((rc == 2)) && [[ $(wc -l <<<"$err") == 1 ]] && ok "--latency-csv with --mode local: $err" || bad "local: rc $rc: $err"
else
  echo "bench,transport,mode,workload,local_pct,working_set_bytes,threads,latency_ns,count,cumulative_fraction" >"$lat"
  echo "farmem-bench,shm,sw,uniform,25,33554432,1,2048,50,0.5" >>"$lat"
  echo "farmem-bench,shm,sw,uniform,25,33554432,1,4096,50,1.0" >>"$lat"
fi
for ns in 20480 24576 28672 32768 49152 65536 131072; do  # a second transport, slower
  echo "farmem-bench,tcp,sw,uniform,25,33554432,1,$ns,10,$($PY -c "print(round(min(1, $ns / 131072), 6))")" >>"$lat"
done
# What a figure holds: plot.py's drawing function writes the PNG, then its axes are read.
drawn() {  # FUNCTION CSV PNG -> the first axes' curves (label:points) or bars (label=height)
  $PY - "$SRC/bench" "$1" "$2" "$3" <<'PYEOF'
import sys
sys.path.insert(0, sys.argv[1])
import contextlib, io
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import plot
with contextlib.redirect_stdout(io.StringIO()):  # its "wrote" line
    getattr(plot, sys.argv[2])(plot.load([sys.argv[3]])[1], sys.argv[4], "")
ax = plt.gcf().axes[0]
if ax.containers:
    print(" ".join("%s=%.2f" % (c.get_label(), p.get_height()) for c in ax.containers for p in c.patches
                   if not c.get_label().startswith("_")))
else:
    print(" ".join("%s:%d" % (l.get_label(), len(l.get_xdata())) for l in ax.get_lines() if not l.get_label().startswith("_")))
PYEOF
}
curves=$(drawn latency_cdf "$lat" "$tmp/cdf.png")
is_png "$tmp/cdf.png" && [[ $curves =~ ^shm:[0-9]+\ tcp:7$ ]] && ok "plot.py drew one CDF curve per transport: $curves" ||
  bad "CDF curves: '$curves'"

# Unmodified programs: grouped bars normalized to plain; a run that never finished is named.
apps=$tmp/apps.csv
echo "program,config,transport,point_pct,rep,budget_mib,wall_s,peak_rss_mib,major_faults,minor_faults,exit,status,output_identical,swapout_mib,cgroup_peak_mib,out_bytes,timeout_s" >"$apps"
for rep in 0 1 2; do
  echo "awk,plain,none,100,$rep,0,2.0,100.0,0,1000,\"0\",ok,yes,,,10,30" >>"$apps"
  echo "sort,plain,none,100,$rep,0,4.0,300.0,0,1000,\"0\",ok,yes,,,10,60" >>"$apps"
  ((rep == 0)) && continue
  echo "awk,swap,zram,25,$rep,25,5.0,25.0,900,1000,\"0\",ok,yes,80.0,25.0,10,30" >>"$apps"
  echo "awk,farmem,shm,25,$rep,25,3.0,25.0,0,1000,\"0\",ok,yes,,,10,30" >>"$apps"
  echo "sort,swap,zram,25,$rep,75,,,,,\"signal 9\",oom,n/a,,,,60" >>"$apps"
  echo "sort,farmem,shm,25,$rep,75,6.0,75.0,0,1000,\"0\",ok,yes,,,10,60" >>"$apps"
done
# The bars' heights: medians normalized to plain (awk: swap 2.5, farmem 1.5; sort: farmem 1.5, swap none).
heights=$(drawn apps_bars "$apps" "$tmp/apps.png")
is_png "$tmp/apps.png" && [[ $heights == "Linux swap (zram)=2.50 farmem-run=1.50 farmem-run=1.50" ]] &&
  ok "plot.py drew the programs as bars normalized to plain: $heights" || bad "bar heights: '$heights'"

echo "a,b" >"$tmp/bad.csv"
err=$($PY "$SRC/bench/plot.py" "$tmp/bad.csv" -o "$tmp/bad.png" 2>&1); rc=$?
((rc == 2)) && [[ $(wc -l <<<"$err") == 1 ]] && ok "not a benchmark CSV: $err" || bad "bad csv: rc $rc: $err"
err=$($PY "$SRC/bench/plot.py" "$lat" "$apps" -o "$tmp/mix.png" 2>&1); rc=$?
((rc == 2)) && [[ $(wc -l <<<"$err") == 1 && $err == *"one kind at a time"* ]] && ok "a mix of kinds: $err" ||
  bad "mixed csv: rc $rc: $err"
sed 's/,2.0,100.0,/,fast,100.0,/' "$apps" >"$tmp/nan.csv"
err=$($PY "$SRC/bench/plot.py" "$tmp/nan.csv" -o "$tmp/nan.png" 2>&1); rc=$?
((rc == 2)) && [[ $(wc -l <<<"$err") == 1 && $err == *"'fast' is not a number"* ]] && ok "a bad number: ${err:0:90}..." ||
  bad "bad number: rc $rc: $err"
exit $((fails > 0))
