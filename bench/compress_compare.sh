#!/usr/bin/env bash
# bench/compress_compare.sh -- does farmem's compressed tier save memory on one
# machine, and how fast is it next to Linux swap to zram? One run, interleaved.
#
# Runs one unmodified program (default: farmem-bench --mode local --data text,
# whose pages compress about 2:1 with lz4) three ways, --repeat times:
#   plain     : in a memory cgroup with no limit (its peak is the program's memory)
#   farmem    : farmem-run --local-mem PCT% --compress CODEC, in a cgroup with no
#               limit: the peak counts the program and its embedded memory server
#               together (the server is its child, in the same cgroup)
#   zram-swap : in a memory cgroup limited to PCT% of the plain peak, swapping to
#               zram (lz4); its memory is the cgroup peak plus zram's mm_stat
# and prints the median wall time and memory of each, and one JSON line.
# Owns a temporary zram device and memory cgroup (bench/swap_env.sh); root only.
set -euo pipefail

PROG=${0##*/}
SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd -- "$SCRIPT_DIR/.." && pwd)
RUN="$REPO_ROOT/build/apps/farmem-run/farmem-run"
BENCH="$REPO_ROOT/build/bench/farmem-bench"
PCT=25
CODEC=lz4
REPEAT=3
WS=512M
DATA=text
CSV=""

usage() {
    cat <<EOF
usage: $PROG [--local-pct 25] [--compress lz4] [--repeat 3] [--working-set 512M] [--data text]
             [--csv FILE] [-- PROGRAM ARGS...]
Default program: farmem-bench --mode local --working-set WS --data DATA --ops 2000000 --workload zipf.
--csv FILE: one row per run appended to FILE (the header when it is new):
  bench,config,program,transport,local_pct,codec,budget_bytes,repetition,
  wall_s,peak_bytes,zram_bytes,memory_bytes,compress_ratio
  (config plain, farmem or zram-swap; transport none, farmem-run's FARMEM_BACKEND
  or shm, zram; local_pct on every row, budget_bytes (PCT% of the plain peak) on
  the farmem and zram-swap rows; codec farmem's --compress or zram's algorithm;
  repetition 0 is the first plain run, whose peak sets the budget, not in the
  medians; peak_bytes is the cgroup's peak, zram_bytes zram's growth,
  memory_bytes their sum as in the table; compress_ratio from farmem-run --stats)
Must run as root (memory cgroups, zram).
EOF
}
die()  { echo "$PROG: error: $*" >&2; exit 2; }
warn() { echo "$PROG: WARNING: $*" >&2; }
log()  { echo "$PROG: $*" >&2; }
need_arg() { [[ $# -ge 2 && -n $2 ]] || die "option $1 needs a value (see --help)"; }
CMD=()
while [[ $# -gt 0 ]]; do
    case $1 in
        --local-pct)   need_arg "$@"; PCT=${2%\%}; shift 2 ;;
        --compress)    need_arg "$@"; CODEC=$2; shift 2 ;;
        --repeat)      need_arg "$@"; REPEAT=$2; shift 2 ;;
        --working-set) need_arg "$@"; WS=$2; shift 2 ;;
        --data)        need_arg "$@"; DATA=$2; shift 2 ;;
        --csv)         need_arg "$@"; CSV=$2; shift 2 ;;
        -h|--help)     usage; exit 0 ;;
        --) shift; CMD=("$@"); break ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done
[[ $(id -u) == 0 ]] || die "needs root (memory cgroups and a zram swap device); run: sudo $0"
[[ -x $RUN ]] || die "farmem-run not found at $RUN; build first (./run.sh or ninja -C build)"
[[ -z $CSV ]] || : >>"$CSV" || die "cannot write --csv file $CSV"
((${#CMD[@]})) || CMD=("$BENCH" --mode local --working-set "$WS" --data "$DATA" --ops 2000000 --workload zipf)

source "$SCRIPT_DIR/swap_env.sh"
CHILD=""
SAMPLER=""
cleanup() {
    [[ -n $CHILD ]] && kill "$CHILD" 2>/dev/null
    [[ -n $SAMPLER ]] && kill "$SAMPLER" 2>/dev/null
    swapenv_teardown
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
TMPD=$(mktemp -d /tmp/farmem-compcmp.XXXXXX)

swapenv_zram_setup $((8 << 30))
swapenv_cgroup_setup "farmem-compcmp-$$" $((64 << 30))

# run_in_cgroup NAME CMD...: prints "wall-seconds cgroup-peak-bytes"; output in $TMPD/NAME.{out,err}
run_in_cgroup() {
    local name=$1; shift
    cg_reset_peak
    local t0 t1 rc=0
    t0=$(date +%s%N)
    ( echo "$BASHPID" >"$CG_DIR/cgroup.procs" && exec "$@" ) >"$TMPD/$name.out" 2>"$TMPD/$name.err" || rc=$?
    t1=$(date +%s%N)
    if ((rc)); then
        echo "$PROG: error: $name exited with status $rc: $*" >&2
        tail -5 "$TMPD/$name.err" >&2
        exit 1
    fi
    echo "$(( (t1 - t0) / 1000000 )) $(cg_peak)"
}
zram_bytes() { awk '{print $3}' "/sys/block/$ZRAM_DEV/mm_stat"; }  # mem_used_total
# csv_row CONFIG REPETITION MS PEAK ZRAM [RATIO]: --csv's row for one run (configuration, then measurements)
csv_row() {
    [[ -n $CSV ]] || return 0
    local transport=none codec=""
    [[ $1 == farmem ]] && transport=${FARMEM_BACKEND:-shm} codec=$CODEC
    [[ $1 == zram-swap ]] && transport=zram codec=$ZRAM_ALG
    python3 - "$CSV" "$1" "${CMD[*]}" "${transport%%://*}" "$PCT" "$codec" "${BUDGET:-}" "$2" "$3" "$4" "$5" "${6:-}" <<'PY'
import csv, os, sys
path, cfg, program, transport, pct, codec, budget, rep, ms, peak, z, ratio = sys.argv[1:13]
with open(path, "a", newline="") as f:
    w = csv.writer(f, lineterminator="\n")
    if os.path.getsize(path) == 0:
        w.writerow(["bench", "config", "program", "transport", "local_pct", "codec", "budget_bytes", "repetition",
                    "wall_s", "peak_bytes", "zram_bytes", "memory_bytes", "compress_ratio"])
    w.writerow(["compress_compare", cfg, program, transport, pct, codec, budget if cfg != "plain" else "", rep,
                "%.3f" % (int(ms) / 1000), peak, z, int(peak) + int(z), ratio])
PY
}

RES=$TMPD/results.tsv
: >"$RES"
log "program: ${CMD[*]}"
read -r ms PLAIN_PEAK < <(run_in_cgroup plain "${CMD[@]}")
BUDGET=$((PLAIN_PEAK * PCT / 100))
csv_row plain 0 "$ms" "$PLAIN_PEAK" 0
log "plain peak $(human "$PLAIN_PEAK"): budget ${PCT}% = $(human "$BUDGET")"
for ((r = 1; r <= REPEAT; r++)); do
    swapenv_cgroup_limit $((64 << 30))
    read -r ms peak < <(run_in_cgroup plain "${CMD[@]}")
    echo -e "plain\t$r\t$ms\t$peak\t0" >>"$RES"
    csv_row plain "$r" "$ms" "$peak" 0
    log "[run $r] plain     ${ms} ms, peak $(human "$peak")"
    read -r ms peak < <(run_in_cgroup farmem "$RUN" --local-mem "$BUDGET" --compress "$CODEC" --stats -- "${CMD[@]}")
    echo -e "farmem\t$r\t$ms\t$peak\t0" >>"$RES"
    csv_row farmem "$r" "$ms" "$peak" 0 "$(grep -o '"ratio":[0-9.]*' "$TMPD/farmem.err" | head -1 | cut -d: -f2)"
    log "[run $r] farmem    ${ms} ms, peak $(human "$peak") (program and memory server), $(grep -o '"ratio":[0-9.]*' "$TMPD/farmem.err" | head -1)"
    swapenv_cgroup_limit "$BUDGET"
    z0=$(zram_bytes)
    ( while sleep 0.2; do zram_bytes; done ) >"$TMPD/zram.samples" &
    SAMPLER=$!
    read -r ms peak < <(run_in_cgroup zram-swap "${CMD[@]}")
    kill "$SAMPLER" 2>/dev/null; wait "$SAMPLER" 2>/dev/null || true
    SAMPLER=""
    zpeak=$(sort -n "$TMPD/zram.samples" | tail -1)
    zpeak=$(( ${zpeak:-0} > z0 ? zpeak - z0 : 0 ))
    echo -e "zram-swap\t$r\t$ms\t$peak\t$zpeak" >>"$RES"
    csv_row zram-swap "$r" "$ms" "$peak" "$zpeak"
    log "[run $r] zram-swap ${ms} ms, cgroup peak $(human "$peak") + zram $(human "$zpeak")"
done

python3 - "$RES" "$PCT" "$CODEC" "$ZRAM_ALG" "${CMD[*]}" <<'PY'
import json, statistics, sys
res, pct, codec, zalg, cmd = sys.argv[1:6]
by = {}
for line in open(res):
    name, run, ms, peak, z = line.rstrip("\n").split("\t")
    by.setdefault(name, []).append((int(ms) / 1000, int(peak) + int(z)))
med = {k: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v)) for k, v in by.items()}
p = med["plain"]
print(f"{'config':<10} {'median s':>9} {'memory MiB':>11} {'vs plain':>9}")
for k in ("plain", "farmem", "zram-swap"):
    s, m = med[k]
    print(f"{k:<10} {s:9.2f} {m / 2**20:11.1f} {m / p[1]:9.2f}")
print(json.dumps({"bench": "compress_compare", "program": cmd, "local_pct": int(pct), "codec": codec,
                  "zram": zalg, **{f"{k}_s": round(v[0], 3) for k, v in med.items()},
                  **{f"{k}_mem_bytes": int(v[1]) for k, v in med.items()},
                  "farmem_memory_saved": round(1 - med["farmem"][1] / p[1], 3),
                  "farmem_vs_zram_speed": round(med["zram-swap"][0] / med["farmem"][0], 3)}))
PY
