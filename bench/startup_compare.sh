#!/usr/bin/env bash
# bench/startup_compare.sh -- what farmem-run adds to a short program's start:
# plain vs farmem-run (first touches by the kernel, the default) vs farmem-run
# with FARMEM_HW_FIRST_TOUCH=runtime, interleaved, median wall time of N rounds.
# Programs: /bin/true, python3 -c pass, a shell wrapper that forks ten
# subshells and then execs python3 (as pyenv-style launchers do), and the
# README's far-array example (build/test/readme_example, no farmem-run).
#   bench/startup_compare.sh [--rounds 11] [--budget 64M]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUN=$ROOT/build/apps/farmem-run/farmem-run
EXAMPLE=$ROOT/build/test/readme_example
ROUNDS=11 BUDGET=64M
while [[ $# -gt 0 ]]; do
  case $1 in
    --rounds) ROUNDS=$2; shift 2 ;;
    --budget) BUDGET=$2; shift 2 ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "startup_compare.sh: unknown option $1; see --help" >&2; exit 2 ;;
  esac
done
[[ -x $RUN ]] || { echo "startup_compare.sh: build first (./run.sh or scripts/setup.sh)" >&2; exit 2; }
PY=/usr/bin/python3
T=$(mktemp -d); trap 'rm -rf "$T"' EXIT
printf '#!/bin/sh\nfor i in 1 2 3 4 5 6 7 8 9 10; do v=$(echo $i | cat); done\nexec %s "$@"\n' "$PY" >"$T/wrap.sh"
chmod +x "$T/wrap.sh"
"$PY" - "$ROUNDS" "$RUN" "$BUDGET" "$T/wrap.sh" "$EXAMPLE" <<'PY'
import os, statistics, subprocess, sys, time
rounds, run, budget, wrap, example = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
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
    if os.access(example, os.X_OK):
        t0 = time.perf_counter()
        subprocess.run([example], check=True, stdout=subprocess.DEVNULL)
        res.setdefault(("README example (8 GiB FarArray, default budget)", "plain"), []).append(time.perf_counter() - t0)
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
