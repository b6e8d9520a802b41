#!/usr/bin/env bash
# The benchmark scripts' --csv: the quick ones run here with tiny settings
# (bench/startup_compare.sh, one round; bench/uthread_curve.sh over a stand-in
# farmem-bench that prints the JSON a real 32 MiB run printed, so the 30 runs
# take no time), and their CSVs must have the header, one row per run with
# its configuration, rows appended by a second run under the one header, and
# the table still printed; bench/plot.py refuses them with its one line. The
# scripts that need root, zram or minutes (compress, kv, pool) are not run here.
# Usage: bench_csv_test.sh SOURCE_DIR FARMEM_BENCH [FARMEM_RUN]
set -uo pipefail
SRC=$1 BENCH=$2 RUN=${3:-}
PY=/usr/bin/python3
export PATH=/usr/bin:$PATH  # the scripts' python3: Debian's, which starts quickly
source "$(dirname "$0")/harness.sh"

# refused CSV: bench/plot.py says in one line that it is none of its kinds, status 2
refused() {
  local err rc
  err=$($PY "$SRC/bench/plot.py" "$1" -o "$tmp/x.png" 2>&1); rc=$?
  ((rc == 2)) && [[ $(wc -l <<<"$err") == 1 && $err == *"is not a benchmark CSV"* && ! -e $tmp/x.png ]]
}

# uthread_curve.sh: 3 delays x 5 uthread counts x REPEAT, a relative --csv (the script cds to the repo)
"$BENCH" --working-set 32M --ops 100 --json >"$tmp/bench.json" 2>"$tmp/bench.err" || bad "farmem-bench: $(cat "$tmp/bench.err")"
printf '#!/bin/sh\ncat %q\n' "$tmp/bench.json" >"$tmp/bench.sh"
chmod +x "$tmp/bench.sh"
(cd "$tmp" && BENCH=$tmp/bench.sh "$SRC/bench/uthread_curve.sh" --csv u.csv 32M 100 2 >"$tmp/u.out" 2>"$tmp/u.err") ||
  bad "uthread_curve.sh: $(cat "$tmp/u.err")"
(cd "$tmp" && BENCH=$tmp/bench.sh "$SRC/bench/uthread_curve.sh" 32M 100 1 --csv u.csv >/dev/null 2>"$tmp/u2.err") ||
  bad "uthread_curve.sh, a second run: $(cat "$tmp/u2.err")"
[[ $(head -1 "$tmp/u.out") == "delay_ns"*"u=256" && $(wc -l <"$tmp/u.out") == 4 ]] &&
  ok "uthread_curve.sh still prints its table" || bad "uthread_curve.sh printed: $(cat "$tmp/u.out")"
$PY - "$tmp/u.csv" "$tmp/bench.json" <<'PYEOF' && ok "uthread_curve.sh --csv: 45 rows, one per run, under one header" || bad "uthread_curve.sh --csv: $(head -3 "$tmp/u.csv")"
import csv, json, sys
lines = open(sys.argv[1]).read().splitlines()
assert lines[0] == ("bench,config,workload,mode,transport,local_pct,working_set_bytes,delay_ns,uthreads,"
                    "repetition,ns_per_op,faults,evictions"), lines[0]
rows = list(csv.DictReader(lines))
assert len(rows) == 45 and not any(r["bench"] == "bench" for r in rows), len(rows)
runs = {(r["delay_ns"], r["uthreads"], r["repetition"]) for r in rows[:30]}
assert runs == {(d, u, rep) for d in ("0", "5000", "20000") for u in ("0", "1", "8", "64", "256") for rep in ("1", "2")}, runs
d = json.load(open(sys.argv[2]))
for r in rows:
    assert r["bench"] == "uthread_curve" and r["config"] == "u=" + r["uthreads"], r
    assert (r["workload"], r["mode"], r["transport"], r["local_pct"]) == ("uniform", "sw", "shm", "25"), r
    assert int(r["working_set_bytes"]) == 32 << 20 and float(r["ns_per_op"]) == d["ns_per_op"], r
    assert int(r["faults"]) == d["faults"] and int(r["evictions"]) == d["evictions"], r
PYEOF
refused "$tmp/u.csv" && ok "plot.py refuses uthread_curve.sh's CSV in one line" || bad "plot.py on uthread_curve.sh's CSV"

# startup_compare.sh: one round of 3 programs x 3 configurations (+ the README example where it is built)
if [[ -n $RUN ]]; then
  FARMEM_RUN=$RUN "$SRC/bench/startup_compare.sh" --rounds 1 --budget 32M --csv "$tmp/s.csv" >"$tmp/s.out" 2>"$tmp/s.err" ||
    bad "startup_compare.sh: $(cat "$tmp/s.err")"
  [[ $(head -1 "$tmp/s.out") == "| program | plain | farmem-run |"* ]] &&
    ok "startup_compare.sh still prints its table" || bad "startup_compare.sh printed: $(cat "$tmp/s.out")"
  $PY - "$tmp/s.csv" <<'PYEOF' && ok "startup_compare.sh --csv: one row per run" || bad "startup_compare.sh --csv: $(cat "$tmp/s.csv")"
import csv, sys
lines = open(sys.argv[1]).read().splitlines()
assert lines[0] == "bench,config,program,local_mem,repetition,wall_s", lines[0]
rows = list(csv.DictReader(lines))
progs = ("true", "python3 -c pass", "wrapper: 10 forks, exec python3")
cfgs = ("plain", "farmem-run", "farmem-run, FIRST_TOUCH=runtime")
runs = [(r["config"], r["program"]) for r in rows if not r["program"].startswith("README example")]
assert sorted(runs) == sorted((c, p) for c in cfgs for p in progs), runs
assert len(rows) - len(runs) <= 1, rows
for r in rows:
    assert r["bench"] == "startup_compare" and r["repetition"] == "1" and float(r["wall_s"]) > 0, r
    assert r["local_mem"] == ("" if r["config"] == "plain" else "32M"), r
PYEOF
  refused "$tmp/s.csv" && ok "plot.py refuses startup_compare.sh's CSV in one line" || bad "plot.py on startup_compare.sh's CSV"
else
  echo "startup_compare.sh not run: no farmem-run in this build"
fi
exit $((fails > 0))
