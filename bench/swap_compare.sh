#!/usr/bin/env bash
# bench/swap_compare.sh -- farmem vs. Linux swap-to-zram, same workload, one run.
# With --swap-file DIR: farmem's SSD tier (file://DIR) vs. Linux swap to a swap
# file in DIR (the same file system), instead of zram.
#
# Owns: a temporary zram swap device (reused if free, else hot-added) and a
# temporary memory cgroup (farmem-swapcmp-<pid>). Runs farmem-bench three ways,
# interleaved, --repeat times:
#   local-swap  : --mode local inside the cgroup (limit = local% of WS + slack),
#                 so the kernel pages to zram
#   farmem-sw   : --mode sw --local-mem <pct>% (no cgroup)
#   local-ideal : --mode local, no cgroup (everything in DRAM)
# and prints median ns/op per configuration plus a final JSON summary line.
# Everything it set up is torn down on EXIT/INT/TERM; pre-existing swap and
# zram devices that were in use are left alone. Requires root.
set -euo pipefail

PROG=${0##*/}
ORIG_ARGS=("$@")
SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd -- "$SCRIPT_DIR/.." && pwd)

BENCH="$REPO_ROOT/build/bench/farmem-bench"
WS_ARG=2G
LOCAL_PCT=25
OPS=2000000
THREADS=1
WORKLOAD=uniform
REPEAT=3
OUT=""
CSV=""                 # --csv FILE: one row per run appended (header when the file is new); bench/plot.py draws it
SWAP_FILE_DIR=""        # --swap-file DIR: swap to a file in DIR, farmem on file://DIR (no zram)
DATA=zeros             # --data KIND: what the pages hold (farmem-bench --data)
COMPRESS=""            # --compress CODEC: also farmem-sw with FARMEM_COMPRESS=CODEC (farmem-sw-z)
UTHREADS=""            # --uthreads N for the farmem runs (64 with --swap-file unless given)
HW=0                   # --hw: also the transparent region (--mode hw), faults in-thread and on the handler thread
SLACK_ARG=16M          # extra cgroup headroom for the binary itself (text, libs, stack, page tables)
SWAP_PRIO=32767

usage() {
    cat <<EOF
usage: $PROG [--bench PATH] [--working-set 2G] [--local-pct 25] [--ops N]
             [--workload uniform|seq|zipf] [--repeat 3] [--threads 1]
             [--slack 16M] [--out FILE] [--csv FILE] [--hw]
             [--swap-file DIR] [--uthreads N] [--data KIND] [--compress CODEC]

Compares Linux swap to zram (farmem-bench --mode local in a memory cgroup
limited to local-pct% of the working set + slack) against farmem
(--mode sw --local-mem <pct>%) and against all-local memory.
With --hw, also farmem's transparent region (--mode hw: plain pointers under
userfaultfd) with FARMEM_HW_FAULTS=signal (farmem-hw-sig) and =thread (farmem-hw-thr).
With --swap-file DIR, the SSD tier instead: Linux swap goes to a swap file made in
DIR (no zram for that run) and farmem to its file:// tier in the same directory
(farmem-file: --backend file://DIR, --uthreads 64 unless --uthreads says).
--uthreads N: uthreads per thread for the farmem runs (--mode local has none).
--data KIND: what the pages hold (zeros, text, ints, random, mixed: farmem-bench --data);
--compress CODEC: also farmem-sw with FARMEM_COMPRESS=CODEC (farmem-sw-z), against
zram's own compression (lz4 where the kernel has it).
Default bench: build/bench/farmem-bench (relative to the repo root).
Must run as root. Defaults: working-set=$WS_ARG local-pct=$LOCAL_PCT ops=$OPS
workload=$WORKLOAD repeat=$REPEAT threads=$THREADS slack=$SLACK_ARG.
EOF
}

die()  { echo "$PROG: error: $*" >&2; exit 2; }
warn() { echo "$PROG: WARNING: $*" >&2; }
log()  { echo "$PROG: $*" >&2; }

# --- argument parsing --------------------------------------------------------
need_arg() { [[ $# -ge 2 && -n $2 ]] || die "option $1 needs a value (see --help)"; }
while [[ $# -gt 0 ]]; do
    case $1 in
        --bench)       need_arg "$@"; BENCH=$2; shift 2 ;;
        --working-set) need_arg "$@"; WS_ARG=$2; shift 2 ;;
        --local-pct)   need_arg "$@"; LOCAL_PCT=${2%\%}; shift 2 ;;
        --ops)         need_arg "$@"; OPS=$2; shift 2 ;;
        --workload)    need_arg "$@"; WORKLOAD=$2; shift 2 ;;
        --repeat)      need_arg "$@"; REPEAT=$2; shift 2 ;;
        --threads)     need_arg "$@"; THREADS=$2; shift 2 ;;
        --slack)       need_arg "$@"; SLACK_ARG=$2; shift 2 ;;
        --out)         need_arg "$@"; OUT=$2; shift 2 ;;
        --csv)         need_arg "$@"; CSV=$2; shift 2 ;;
        --hw)          HW=1; shift ;;
        --swap-file)   need_arg "$@"; SWAP_FILE_DIR=$2; shift 2 ;;
        --uthreads)    need_arg "$@"; UTHREADS=$2; shift 2 ;;
        --data)        need_arg "$@"; DATA=$2; shift 2 ;;
        --compress)    need_arg "$@"; COMPRESS=$2; shift 2 ;;
        -h|--help)     usage; exit 0 ;;
        *) echo "$PROG: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done

# "2G", "512M", "64K", "1T", "4096", also "2GiB"/"2gb" -> bytes (binary units)
parse_size() {
    local s=${1^^} n unit
    s=${s%B}; s=${s%I}
    [[ $s =~ ^([0-9]+)([KMGT]?)$ ]] || return 1
    n=${BASH_REMATCH[1]}; unit=${BASH_REMATCH[2]}
    case $unit in
        K) n=$((n << 10)) ;; M) n=$((n << 20)) ;;
        G) n=$((n << 30)) ;; T) n=$((n << 40)) ;;
    esac
    echo "$n"
}
# bytes -> shortest exact K/M/G form understood by farmem-bench
fmt_size_arg() {
    local b=$1
    if   (( b % (1 << 30) == 0 )); then echo "$((b >> 30))G"
    elif (( b % (1 << 20) == 0 )); then echo "$((b >> 20))M"
    elif (( b % (1 << 10) == 0 )); then echo "$((b >> 10))K"
    else echo "$b"; fi
}
human() { awk -v b="$1" 'BEGIN{ split("B KiB MiB GiB TiB",u," "); i=1; while (b>=1024 && i<5) {b/=1024; i++}; printf "%.2f %s", b, u[i] }'; }

WS_BYTES=$(parse_size "$WS_ARG") || die "bad --working-set '$WS_ARG' (use e.g. 2G, 512M)"
SLACK_BYTES=$(parse_size "$SLACK_ARG") || die "bad --slack '$SLACK_ARG'"
is_posint() { [[ $1 =~ ^[1-9][0-9]*$ ]]; }
if ! is_posint "$LOCAL_PCT" || (( LOCAL_PCT > 100 )); then
    die "--local-pct must be an integer 1..100 (got '$LOCAL_PCT')"
fi
is_posint "$OPS"     || die "--ops must be a positive integer"
is_posint "$REPEAT"  || die "--repeat must be a positive integer"
is_posint "$THREADS" || die "--threads must be a positive integer"
case $WORKLOAD in uniform|seq|zipf) ;; *) die "--workload must be uniform, seq or zipf";; esac
(( WS_BYTES > 0 )) || die "--working-set must be > 0"
WS_FMT=$(fmt_size_arg "$WS_BYTES")
PAGE=$(getconf PAGESIZE)
LOCAL_BYTES=$(( WS_BYTES * LOCAL_PCT / 100 ))
CG_LIMIT=$(( (LOCAL_BYTES + SLACK_BYTES + PAGE - 1) / PAGE * PAGE ))
ZRAM_SIZE=$(( WS_BYTES + (1 << 30) ))

# --- preconditions -------------------------------------------------------------
(( EUID == 0 )) || { echo "$PROG: must run as root (zram swap + memory cgroup); fix: sudo $0 ${ORIG_ARGS[*]}" >&2; exit 2; }
[[ -x $BENCH && -f $BENCH ]] || die "bench binary not found or not executable: $BENCH (build it, or pass --bench PATH)"
command -v python3 >/dev/null || die "python3 is required"
for t in mkswap swapon swapoff; do command -v "$t" >/dev/null || die "'$t' not found (install util-linux)"; done
if [[ -z $SWAP_FILE_DIR ]]; then
    [[ -d /sys/class/zram-control || -e /sys/block/zram0 ]] || die "zram not available (load it: modprobe zram)"
else
    SWAP_FILE_DIR=$(cd -- "$SWAP_FILE_DIR" 2>/dev/null && pwd) || die "--swap-file: no such directory"
    [[ -n $UTHREADS ]] || UTHREADS=64
fi
[[ -z $UTHREADS ]] || [[ $UTHREADS =~ ^[0-9]+$ ]] || die "--uthreads must be a number"
if [[ -n $OUT ]]; then : >>"$OUT" || die "cannot write --out file '$OUT'"; fi

# --- state for teardown ----------------------------------------------------------
# zram + cgroup set-up and teardown live in swap_env.sh (shared with apps_compare.sh)
source "$SCRIPT_DIR/swap_env.sh"
CHILD=""               # PID of the currently running bench
TMPD=""
CLEANED=0

cleanup() {
    local rc=$?
    (( CLEANED )) && return 0
    CLEANED=1
    set +e
    trap '' INT TERM     # don't let a second Ctrl-C abort the teardown
    # 1) stop the bench we started
    if [[ -n $CHILD ]] && kill -0 "$CHILD" 2>/dev/null; then
        kill -TERM "$CHILD" 2>/dev/null
        for _ in $(seq 50); do kill -0 "$CHILD" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$CHILD" 2>/dev/null
        wait "$CHILD" 2>/dev/null
    fi
    # 2) what is left in the cgroup, the cgroup, the zram swap device
    swapenv_teardown
    [[ -n $TMPD ]] && rm -rf "$TMPD"
    log "teardown done (zram ${ZRAM_DEV:-none}, cgroup ${CG_DIR:-none})"
    return "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

TMPD=$(mktemp -d /tmp/farmem-swapcmp.XXXXXX)

# --- zram device + memory cgroup -------------------------------------------------
if [[ -n $SWAP_FILE_DIR ]]; then
    swapenv_file_setup "$SWAP_FILE_DIR" "$ZRAM_SIZE"
    SWAP_KIND=file; FARMEM_CFG=farmem-file
else
    swapenv_zram_setup "$ZRAM_SIZE"
    SWAP_KIND=zram; FARMEM_CFG=farmem-sw
fi
FARMEM_ARGS=()
[[ -z $UTHREADS || $UTHREADS == 0 ]] || FARMEM_ARGS+=(--uthreads "$UTHREADS")
[[ -z $SWAP_FILE_DIR ]] || FARMEM_ARGS+=(--backend "file://$SWAP_FILE_DIR")
swapenv_cgroup_setup "farmem-swapcmp-$$" "$CG_LIMIT"
log "cgroup v$CG_VER: $CG_DIR, limit $(human "$CG_LIMIT") = ${LOCAL_PCT}% of $(human "$WS_BYTES") + $(human "$SLACK_BYTES") slack"

# --- runs -----------------------------------------------------------------------
COMMON=(--workload "$WORKLOAD" --working-set "$WS_FMT" --ops "$OPS" --threads "$THREADS" --data "$DATA" --json)
RESULTS=$TMPD/results.tsv      # config \t run \t pswpout_delta_pages \t json
: >"$RESULTS"
[[ -z $OUT ]] || echo "# swap_compare $(date -Is) workload=$WORKLOAD working_set=$WS_BYTES local_pct=$LOCAL_PCT ops=$OPS threads=$THREADS repeat=$REPEAT swap=${SWAP_FILE:-$ZRAM_DEV/$ZRAM_ALG} uthreads=${UTHREADS:-0} cgroup=v$CG_VER limit=$CG_LIMIT slack=$SLACK_BYTES" >>"$OUT"

# run_one CONFIG RUN INCG -- args...
run_one() {
    local cfg=$1 run=$2 incg=$3; shift 4
    local out=$TMPD/$cfg.$run.out rc=0 before after delta json
    before=$(pswpout)
    if [[ $incg == 1 ]]; then cg_reset_peak; fi
    if [[ $incg == 1 ]]; then
        # subshell joins the cgroup, then becomes the bench (charges start from exec)
        ( echo "$BASHPID" >"$CG_DIR/cgroup.procs" && exec "$BENCH" "$@" ) >"$out" &
    else
        env ${RUN_ENV:-} "$BENCH" "$@" >"$out" &
    fi
    CHILD=$!
    wait "$CHILD" || rc=$?
    CHILD=""
    after=$(pswpout); delta=$((after - before))
    if (( rc != 0 )); then
        local why=""
        (( rc == 137 )) && why=" (SIGKILL -- OOM? check dmesg)"
        echo "$PROG: error: $cfg run $run: farmem-bench exited with status $rc$why" >&2
        echo "  command: $BENCH $*" >&2
        if [[ -s $out ]]; then echo "  stdout:" >&2; sed 's/^/    /' "$out" | tail -n 20 >&2; fi
        exit 1
    fi
    json=$(grep -E '^[[:space:]]*\{' "$out" | tail -n 1 || true)
    if [[ -z $json ]] || ! python3 -c 'import json,sys; d=json.loads(sys.argv[1]); assert float(d["ops"])>0 and (float(d["seconds"])>0 or float(d["ops_per_sec"])>0)' "$json" 2>/dev/null; then
        echo "$PROG: error: $cfg run $run: no valid JSON line (needs ops, seconds/ops_per_sec) from farmem-bench; stdout was:" >&2
        sed 's/^/    /' "$out" | tail -n 20 >&2
        exit 1
    fi
    printf '%s\t%s\t%s\t%s\n' "$cfg" "$run" "$delta" "$json" >>"$RESULTS"
    local extra=""
    if [[ $incg == 1 ]]; then
        extra=", cgroup peak $(human "$(cg_peak)")"
        if (( delta == 0 )); then
            warn "$cfg run $run: pswpout did not move -- the kernel did not swap; the limit may be too loose or the workload did not touch its working set"
        elif (( delta * PAGE < (WS_BYTES - CG_LIMIT) / 4 )); then
            warn "$cfg run $run: only $(human $((delta * PAGE))) swapped out, expected >= ~$(human $((WS_BYTES > CG_LIMIT ? WS_BYTES - CG_LIMIT : 0)))"
        fi
    elif (( delta > 0 )); then
        warn "$cfg run $run: system swapped $(human $((delta * PAGE))) during a run outside the cgroup (global memory pressure?)"
    fi
    python3 - "$cfg" "$run" "$REPEAT" "$delta" "$PAGE" "$extra" "$json" "$CSV" "$WORKLOAD" "$LOCAL_PCT" \
        "$WS_BYTES" "$THREADS" "$SWAP_KIND" <<'PY' >&2
import json, os, sys
cfg, run, rep, delta, page, extra, line, csv, workload, pct, ws, threads, swap_kind = sys.argv[1:14]
d = json.loads(line)
ops = float(d["ops"]); s = float(d.get("seconds") or 0)
ns = s * 1e9 / ops if s > 0 else 1e9 / float(d["ops_per_sec"])
print(f"  [run {run}/{rep}] {cfg:<11} {ns:10.1f} ns/op  {1e9/ns:12.0f} ops/s  "
      f"faults={d.get('faults','-')} evictions={d.get('evictions','-')}  "
      f"swapout={int(delta)*int(page)/2**20:.1f} MiB{extra}")
if csv:
    # config of the run, then what it measured (bench/plot.py reads these columns)
    mode, transport = {"local-swap": ("swap", swap_kind), "farmem-sw": ("farmem-sw", "shm"),
                       "farmem-file": ("farmem-sw", "file"),
                       "farmem-sw-z": ("farmem-sw-compressed", "shm"), "farmem-hw-sig": ("farmem-hw-signal", "shm"), "farmem-hw-thr": ("farmem-hw", "shm"),
                       "local-ideal": ("local", "none")}.get(cfg, (cfg, ""))
    new = not os.path.exists(csv) or os.path.getsize(csv) == 0
    with open(csv, "a") as f:
        if new:
            f.write("bench,workload,mode,transport,local_pct,working_set_bytes,threads,repetition,"
                    "ns_per_op,ops_per_sec,faults,evictions,swapout_bytes\n")
        f.write(f"swap_compare,{workload},{mode},{transport},{pct},{ws},{threads},{run},{ns:.2f},{1e9/ns:.0f},"
                f"{d.get('faults', '')},{d.get('evictions', '')},{int(delta) * int(page)}\n")
PY
    if [[ -n $OUT ]]; then
        echo "# config=$cfg run=$run pswpout_delta_pages=$delta" >>"$OUT"
        echo "$json" >>"$OUT"
    fi
}

log "running $REPEAT x {local-swap ($SWAP_KIND), $FARMEM_CFG, local-ideal}: workload=$WORKLOAD ws=$WS_FMT local=${LOCAL_PCT}% ops=$OPS threads=$THREADS uthreads=${UTHREADS:-0}"
for ((r = 1; r <= REPEAT; r++)); do
    run_one local-swap  "$r" 1 -- --mode local "${COMMON[@]}" --local-mem "${LOCAL_PCT}%"
    run_one "$FARMEM_CFG" "$r" 0 -- --mode sw  "${COMMON[@]}" --local-mem "${LOCAL_PCT}%" "${FARMEM_ARGS[@]}"
    if [[ -n $COMPRESS ]]; then
        RUN_ENV=FARMEM_COMPRESS=$COMPRESS run_one farmem-sw-z "$r" 0 -- --mode sw "${COMMON[@]}" --local-mem "${LOCAL_PCT}%" "${FARMEM_ARGS[@]}"
    fi
    if (( HW )); then
        RUN_ENV=FARMEM_HW_FAULTS=signal run_one farmem-hw-sig "$r" 0 -- --mode hw "${COMMON[@]}" --local-mem "${LOCAL_PCT}%"
        RUN_ENV=FARMEM_HW_FAULTS=thread run_one farmem-hw-thr "$r" 0 -- --mode hw "${COMMON[@]}" --local-mem "${LOCAL_PCT}%"
    fi
    run_one local-ideal "$r" 0 -- --mode local "${COMMON[@]}" --local-mem "${LOCAL_PCT}%"
done

# --- summary --------------------------------------------------------------------
SUMMARY=$(python3 - "$RESULTS" "$WORKLOAD" "$WS_BYTES" "$LOCAL_PCT" "$REPEAT" "$CG_LIMIT" "$SLACK_BYTES" \
                    "$ZRAM_DEV" "$ZRAM_ALG" "$CG_VER" "$PAGE" "$SWAP_FILE" "$FARMEM_CFG" "${UTHREADS:-0}" <<'PY'
import json, statistics, sys
path, workload, ws, pct, rep, limit, slack, zdev, zalg, cgver, page, swap_file, fm, uthreads = sys.argv[1:15]
rows = {}
swapped = {}
for ln in open(path):
    cfg, run, delta, js = ln.rstrip("\n").split("\t", 3)
    d = json.loads(js)
    ops = float(d["ops"]); s = float(d.get("seconds") or 0)
    ns = s * 1e9 / ops if s > 0 else 1e9 / float(d["ops_per_sec"])
    rows.setdefault(cfg, []).append(ns)
    swapped.setdefault(cfg, []).append(int(delta) * int(page))
med = {k: statistics.median(v) for k, v in rows.items()}
ws = int(ws); pct = int(pct); limit = int(limit); slack = int(slack)
out = []
out.append(f"== swap_compare: workload={workload} working_set={ws/2**30:.2f} GiB local={pct}% "
           f"runs={rep} ==")
swap_name = f"swap file {swap_file}" if swap_file else f"zram /dev/{zdev} ({zalg})"
out.append(f"   Linux swap: {swap_name}, cgroup v{cgver} limit {limit/2**20:.1f} MiB "
           f"= {pct}% of working set + {slack/2**20:.0f} MiB slack for the binary; farmem uthreads {uthreads}")
out.append(f"   {'config':<12}{'median ns/op':>14}{'min':>11}{'max':>11}{'median ops/s':>15}{'swapout/run':>14}")
names = {"local-swap": "local-swap", "farmem-sw": "farmem-sw", "local-ideal": "local-ideal"}
for k in ("local-swap", "farmem-sw", "farmem-sw-z", "farmem-file", "farmem-hw-sig", "farmem-hw-thr", "local-ideal"):
    v = rows.get(k, [])
    if not v: continue
    out.append(f"   {k:<12}{med[k]:>14.1f}{min(v):>11.1f}{max(v):>11.1f}{1e9/med[k]:>15.0f}"
               f"{statistics.median(swapped[k])/2**20:>10.1f} MiB")
sp = med["local-swap"] / med[fm]
sl = med[fm] / med["local-ideal"]
kind = "a swap file" if swap_file else "zram"
out.append(f"   farmem {'file://' if swap_file else 'sw'} speedup vs Linux swap ({kind}): {sp:.2f}x   "
           f"slowdown vs all-local: {sl:.2f}x")
summary = {"workload": workload, "working_set_bytes": ws, "local_pct": pct,
           "swap": "file" if swap_file else "zram", "farmem_uthreads": int(uthreads),
           "swap_ns_per_op": round(med["local-swap"], 2), "sw_ns_per_op": round(med[fm], 2),
           "local_ns_per_op": round(med["local-ideal"], 2),
           "sw_speedup_vs_swap": round(sp, 4), "sw_slowdown_vs_local": round(sl, 4),
           "runs": int(rep)}
for k, name in (("farmem-sw-z", "sw_compressed"), ("farmem-hw-sig", "hw_signal"), ("farmem-hw-thr", "hw_thread")):
    if k in med:
        out.append(f"   farmem {name} speedup vs Linux swap (zram): {med['local-swap'] / med[k]:.2f}x")
        summary[name + "_ns_per_op"] = round(med[k], 2)
        summary[name + "_speedup_vs_swap"] = round(med["local-swap"] / med[k], 4)
print("\n".join(out))
print(json.dumps(summary, separators=(",", ":")))
PY
)
echo "$SUMMARY" | head -n -1
echo "$SUMMARY" | tail -n 1
if [[ -n $OUT ]]; then
    echo "$SUMMARY" | head -n -1 | sed 's/^/# /' >>"$OUT"
    echo "$SUMMARY" | tail -n 1 >>"$OUT"
fi
