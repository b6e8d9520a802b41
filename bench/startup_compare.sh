#!/usr/bin/env bash
# bench/startup_compare.sh -- what farmem-run adds to a short program's start:
# plain vs farmem-run (first touches by the kernel, the default) vs farmem-run
# with FARMEM_HW_FIRST_TOUCH=runtime, interleaved, median wall time of N rounds.
# Programs: /bin/true, python3 -c pass, a shell wrapper that forks ten
# subshells and then execs python3 (as pyenv-style launchers do), and the
# README's far-array example (build/test/readme_example, no farmem-run).
#   bench/startup_compare.sh [--rounds 11] [--budget 64M] [--csv FILE]
#   --csv FILE: one row per run appended to FILE (the header when it is new):
#     bench,config,program,local_mem,repetition,wall_s
#     (config and program as in the table; local_mem is --budget, empty where
#     farmem-run is not used; repetition is the round, from 1)
# FARMEM_RUN: the farmem-run to use (default build/apps/farmem-run/farmem-run).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUN=${FARMEM_RUN:-$ROOT/build/apps/farmem-run/farmem-run}
EXAMPLE=$ROOT/build/test/readme_example
ROUNDS=11 BUDGET=64M CSV=""
while [[ $# -gt 0 ]]; do
  case $1 in
    --rounds) ROUNDS=$2; shift 2 ;;
    --budget) BUDGET=$2; shift 2 ;;
    --csv) CSV=$2; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "startup_compare.sh: unknown option $1; see --help" >&2; exit 2 ;;
  esac
done
[[ -x $RUN ]] || { echo "startup_compare.sh: build first (./run.sh or scripts/setup.sh)" >&2; exit 2; }
[[ -z $CSV ]] || : >>"$CSV" || { echo "startup_compare.sh: cannot write --csv file $CSV" >&2; exit 2; }
PY=/usr/bin/python3
T=$(mktemp -d); trap 'rm -rf "$T"' EXIT
printf '#!/bin/sh\nfor i in 1 2 3 4 5 6 7 8 9 10; do v=$(echo $i | cat); done\nexec %s "$@"\n' "$PY" >"$T/wrap.sh"
chmod +x "$T/wrap.sh"
"$PY" - "$ROUNDS" "$RUN" "$BUDGET" "$T/wrap.sh" "$EXAMPLE" "$CSV" <<'PY'
import csv, os, statistics, subprocess, sys, time
rounds, run, budget, wrap, example, csv_path = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6]

def csv_row(mode, name, local_mem, r, seconds):  # --csv: the run's configuration, then its wall time
    if not csv_path:
        return
    new = not os.path.exists(csv_path) or os.path.getsize(csv_path) == 0
    with open(csv_path, "a", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        if new:
            w.writerow(["bench", "config", "program", "local_mem", "repetition", "wall_s"])
        w.writerow(["startup_compare", mode, name, local_mem, r + 1, f"{seconds:.4f}"])

progs = {"true": ["/bin/true"], "python3 -c pass": ["/usr/bin/python3", "-c", "pass"],
         "wrapper: 10 forks, exec python3": [wrap, "-c", "pass"]}
modes = {"plain": ([], {}), "farmem-run": ([run, "--local-mem", budget, "--"], {}),
         "farmem-run, FIRST_TOUCH=runtime": ([run, "--local-mem", budget, "--"], {"FARMEM_HW_FIRST_TOUCH": "runtime"})}
res = {}
for r in range(rounds):
    for name, argv in progs.items():
        for mode, (pre, env) in modes.items():
            t0 = time.perf_counter()
            subprocess.run(pre + argv, check=True, env={**os.environ, **env}, stdout=subprocess.DEVNULL)
            res.setdefault((name, mode), []).append(time.perf_counter() - t0)
            csv_row(mode, name, budget if pre else "", r, res[(name, mode)][-1])
    if os.access(example, os.X_OK):
        t0 = time.perf_counter()
        subprocess.run([example], check=True, stdout=subprocess.DEVNULL)
        res.setdefault(("README example (8 GiB FarArray, default budget)", "plain"), []).append(time.perf_counter() - t0)
        csv_row("plain", "README example (8 GiB FarArray, default budget)", "", r,
                res[("README example (8 GiB FarArray, default budget)", "plain")][-1])
print("| program | " + " | ".join(modes) + " |")
print("| --- |" + " --- |" * len(modes))
names = list(progs) + ["README example (8 GiB FarArray, default budget)"]
for name in names:
    cells = []
    for mode in modes:
        v = res.get((name, mode))
        cells.append("%.0f ms" % (1000 * statistics.median(v)) if v else "")
    print("| %s | %s |" % (name, " | ".join(cells)))
PY
