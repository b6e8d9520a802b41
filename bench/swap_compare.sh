#!/usr/bin/env bash
# bench/swap_compare.sh -- farmem vs. Linux swap-to-zram, same workload, one run.
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
HW=0                   # --hw: also the transparent region (--mode hw), faults in-thread and on the handler thread
SLACK_ARG=16M          # extra cgroup headroom for the binary itself (text, libs, stack, page tables)
SWAP_PRIO=32767

usage() {
    cat <<EOF
usage: $PROG [--bench PATH] [--working-set 2G] [--local-pct 25] [--ops N]
             [--workload uniform|seq|zipf] [--repeat 3] [--threads 1]
             [--slack 16M] [--out FILE] [--hw]

Compares Linux swap to zram (farmem-bench --mode local in a memory cgroup
limited to local-pct% of the working set + slack) against farmem
(--mode sw --local-mem <pct>%) and against all-local memory.
With --hw, also farmem's transparent region (--mode hw: plain pointers under
userfaultfd) with FARMEM_HW_FAULTS=signal (farmem-hw-sig) and =thread (farmem-hw-thr).
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
        --hw)          HW=1; shift ;;
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
[[ -d /sys/class/zram-control || -e /sys/block/zram0 ]] || die "zram not available (load it: modprobe zram)"
if [[ -n $OUT ]]; then : >>"$OUT" || die "cannot write --out file '$OUT'"; fi

# --- state for teardown ----------------------------------------------------------
ZRAM_DEV=""            # e.g. zram1
ZRAM_ADDED=0           # we hot_added it -> hot_remove on exit
ZRAM_OLD_ALG=""        # comp_algorithm before we touched it (restored after reset)
ZRAM_INITED=0          # we set disksize -> reset on exit
ZRAM_SWAPON=0
DEVNODE_MADE=""        # /dev/zramN we mknod'ed (no udev)
CG_DIR=""
CG_VER=""
CG2_ENABLED_AT=""      # cgroup2 subtree_control file where we enabled +memory
CHILD=""               # PID of the currently running bench
TMPD=""
CLEANED=0

cleanup() {
    local rc=$?
    (( CLEANED )) && return 0
    CLEANED=1
    set +e
    trap '' INT TERM     # don't let a second Ctrl-C abort the teardown
    # 1) stop the bench we started, and anything left in our cgroup (only our own processes)
    if [[ -n $CHILD ]] && kill -0 "$CHILD" 2>/dev/null; then
        kill -TERM "$CHILD" 2>/dev/null
        for _ in $(seq 50); do kill -0 "$CHILD" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$CHILD" 2>/dev/null
        wait "$CHILD" 2>/dev/null
    fi
    if [[ -n $CG_DIR && -d $CG_DIR ]]; then
        local procs pid
        for _ in $(seq 50); do
            procs=$(cat "$CG_DIR/cgroup.procs" 2>/dev/null)
            [[ -z $procs ]] && break
            for pid in $procs; do kill -KILL "$pid" 2>/dev/null; done
            sleep 0.1
        done
        rmdir "$CG_DIR" 2>/dev/null || { sleep 0.5; rmdir "$CG_DIR" 2>/dev/null; } \
            || echo "$PROG: WARNING: could not remove cgroup $CG_DIR" >&2
    fi
    if [[ -n $CG2_ENABLED_AT ]]; then
        echo "-memory" >"$CG2_ENABLED_AT" 2>/dev/null
    fi
    # 2) swap off + reset the zram device
    if [[ -n $ZRAM_DEV ]]; then
        if (( ZRAM_SWAPON )) || grep -q "^/dev/${ZRAM_DEV}[[:space:]]" /proc/swaps; then
            swapoff "/dev/$ZRAM_DEV" 2>/dev/null \
                || echo "$PROG: WARNING: swapoff /dev/$ZRAM_DEV failed" >&2
        fi
        if (( ZRAM_INITED )) || [[ $(cat "/sys/block/$ZRAM_DEV/initstate" 2>/dev/null) == 1 ]]; then
            echo 1 >"/sys/block/$ZRAM_DEV/reset" 2>/dev/null \
                || echo "$PROG: WARNING: reset of $ZRAM_DEV failed" >&2
        fi
        if (( ! ZRAM_ADDED )) && [[ -n $ZRAM_OLD_ALG ]]; then
            local cur
            cur=$(sed -n 's/.*\[\([^]]*\)\].*/\1/p' "/sys/block/$ZRAM_DEV/comp_algorithm" 2>/dev/null)
            [[ $cur != "$ZRAM_OLD_ALG" ]] && echo "$ZRAM_OLD_ALG" >"/sys/block/$ZRAM_DEV/comp_algorithm" 2>/dev/null
        fi
        [[ -n $DEVNODE_MADE ]] && rm -f "$DEVNODE_MADE"
        if (( ZRAM_ADDED )); then
            echo "${ZRAM_DEV#zram}" >/sys/class/zram-control/hot_remove 2>/dev/null \
                || echo "$PROG: WARNING: hot_remove of $ZRAM_DEV failed" >&2
        fi
    fi
    [[ -n $TMPD ]] && rm -rf "$TMPD"
    log "teardown done (zram ${ZRAM_DEV:-none}, cgroup ${CG_DIR:-none})"
    return "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

TMPD=$(mktemp -d /tmp/farmem-swapcmp.XXXXXX)

# --- pre-existing swap ----------------------------------------------------------
if [[ $(wc -l </proc/swaps) -gt 1 ]]; then
    warn "swap already active before this run (left untouched; our zram gets priority $SWAP_PRIO):"
    tail -n +2 /proc/swaps >&2
fi

# --- zram device ----------------------------------------------------------------
zram_is_free() {  # $1 = zramN
    local d=$1
    [[ -e /sys/block/$d/initstate ]] || return 1
    [[ $(cat "/sys/block/$d/initstate") == 0 ]] || return 1
    grep -q "^/dev/${d}[[:space:]]" /proc/swaps && return 1
    grep -q "^/dev/${d}[[:space:]]" /proc/mounts && return 1
    [[ -z $(ls -A "/sys/block/$d/holders" 2>/dev/null) ]] || return 1
    return 0
}
for d in /sys/block/zram*; do
    [[ -e $d ]] || continue
    if zram_is_free "${d##*/}"; then ZRAM_DEV=${d##*/}; break; fi
done
if [[ -z $ZRAM_DEV ]]; then
    [[ -w /sys/class/zram-control/hot_add ]] || die "no free zram device and no /sys/class/zram-control/hot_add"
    id=$(cat /sys/class/zram-control/hot_add) || die "zram hot_add failed"
    ZRAM_DEV=zram$id; ZRAM_ADDED=1
fi
ZSYS=/sys/block/$ZRAM_DEV
algs=$(tr -d '[]' <"$ZSYS/comp_algorithm")
ZRAM_OLD_ALG=$(sed -n 's/.*\[\([^]]*\)\].*/\1/p' "$ZSYS/comp_algorithm")
ZRAM_ALG=""
for a in lz4 lzo-rle lzo zstd; do
    if [[ " $algs " == *" $a "* ]]; then ZRAM_ALG=$a; break; fi
done
[[ -n $ZRAM_ALG ]] || ZRAM_ALG=$ZRAM_OLD_ALG
[[ $ZRAM_ALG == "$ZRAM_OLD_ALG" ]] || echo "$ZRAM_ALG" >"$ZSYS/comp_algorithm" \
    || die "cannot set comp_algorithm=$ZRAM_ALG on $ZRAM_DEV"
ZRAM_INITED=1
echo "$ZRAM_SIZE" >"$ZSYS/disksize" || die "cannot set disksize on $ZRAM_DEV"
if [[ ! -b /dev/$ZRAM_DEV ]]; then
    for _ in $(seq 20); do [[ -b /dev/$ZRAM_DEV ]] && break; sleep 0.1; done   # give udev a moment
    if [[ ! -b /dev/$ZRAM_DEV ]]; then
        IFS=: read -r maj min <"$ZSYS/dev"
        mknod "/dev/$ZRAM_DEV" b "$maj" "$min" || die "cannot create /dev/$ZRAM_DEV"
        DEVNODE_MADE=/dev/$ZRAM_DEV
    fi
fi
mkswap -q "/dev/$ZRAM_DEV" >/dev/null || die "mkswap /dev/$ZRAM_DEV failed"
ZRAM_SWAPON=1
swapon -p "$SWAP_PRIO" "/dev/$ZRAM_DEV" || { ZRAM_SWAPON=0; die "swapon /dev/$ZRAM_DEV failed"; }
log "zram swap: /dev/$ZRAM_DEV ($ZRAM_ALG, $(human "$ZRAM_SIZE"), prio $SWAP_PRIO, $( ((ZRAM_ADDED)) && echo hot-added || echo reused)), vm.page-cluster=$(cat /proc/sys/vm/page-cluster) (left as is)"

# --- memory cgroup --------------------------------------------------------------
CG_NAME=farmem-swapcmp-$$
cg2_mnt=$(awk '$3=="cgroup2"{print $2; exit}' /proc/mounts)
cg1_mnt=$(awk '$3=="cgroup" && $4 ~ /(^|,)memory(,|$)/ {print $2; exit}' /proc/mounts)
if [[ -n $cg2_mnt ]] && grep -qw memory "$cg2_mnt/cgroup.controllers" 2>/dev/null; then
    # v2: create directly under the hierarchy root (the root is exempt from the
    # no-internal-processes rule, so enabling +memory there is always allowed).
    CG_VER=2
    if ! grep -qw memory "$cg2_mnt/cgroup.subtree_control"; then
        echo "+memory" >"$cg2_mnt/cgroup.subtree_control" || die "cannot enable memory controller in $cg2_mnt"
        CG2_ENABLED_AT=$cg2_mnt/cgroup.subtree_control
    fi
    CG_DIR=$cg2_mnt/$CG_NAME
    mkdir "$CG_DIR" || { CG_DIR=""; die "cannot create cgroup $cg2_mnt/$CG_NAME"; }
    echo "$CG_LIMIT" >"$CG_DIR/memory.max" || die "cannot set memory.max"
    [[ -e $CG_DIR/memory.swap.max ]] && echo max >"$CG_DIR/memory.swap.max"
    if [[ -e $CG_DIR/memory.zswap.max ]]; then  # pure swap-to-zram, no zswap in front
        echo 0 >"$CG_DIR/memory.zswap.max" 2>/dev/null || true
    fi
    sw=$(cat /proc/sys/vm/swappiness)
    (( sw >= 60 )) || warn "vm.swappiness=$sw (cgroup v2 has no per-cgroup swappiness); low values may favour page-cache reclaim"
elif [[ -n $cg1_mnt ]]; then
    # v1: nest under our own memory cgroup so existing hierarchical limits/accounting still apply.
    CG_VER=1
    self_cg=$(awk -F: '$2 ~ /(^|,)memory(,|$)/ {print $3; exit}' /proc/self/cgroup)
    parent=$cg1_mnt${self_cg:-}
    [[ -d $parent ]] || parent=$cg1_mnt
    CG_DIR=$parent/$CG_NAME
    CG_DIR=${CG_DIR//\/\//\/}
    mkdir "$CG_DIR" || { CG_DIR=""; die "cannot create cgroup $parent/$CG_NAME"; }
    echo "$CG_LIMIT" >"$CG_DIR/memory.limit_in_bytes" || die "cannot set memory.limit_in_bytes"
    if [[ -e $CG_DIR/memory.memsw.limit_in_bytes ]]; then
        echo -1 >"$CG_DIR/memory.memsw.limit_in_bytes" 2>/dev/null || true   # unlimited (default)
    fi
    echo 100 >"$CG_DIR/memory.swappiness" 2>/dev/null || warn "cannot set memory.swappiness=100"
else
    die "no usable memory cgroup (need cgroup2 with the memory controller or a v1 memory hierarchy)"
fi
log "cgroup v$CG_VER: $CG_DIR, limit $(human "$CG_LIMIT") = ${LOCAL_PCT}% of $(human "$WS_BYTES") + $(human "$SLACK_BYTES") slack"

cg_reset_peak() {
    if [[ $CG_VER == 1 ]]; then echo 0 >"$CG_DIR/memory.max_usage_in_bytes" 2>/dev/null || true
    elif [[ -e $CG_DIR/memory.peak ]]; then echo 0 >"$CG_DIR/memory.peak" 2>/dev/null || true; fi
}
cg_peak() {
    if [[ $CG_VER == 1 ]]; then cat "$CG_DIR/memory.max_usage_in_bytes" 2>/dev/null || echo 0
    else cat "$CG_DIR/memory.peak" 2>/dev/null || echo 0; fi
}
pswpout() { awk '$1=="pswpout"{print $2}' /proc/vmstat; }

# --- runs -----------------------------------------------------------------------
COMMON=(--workload "$WORKLOAD" --working-set "$WS_FMT" --ops "$OPS" --threads "$THREADS" --json)
RESULTS=$TMPD/results.tsv      # config \t run \t pswpout_delta_pages \t json
: >"$RESULTS"
[[ -z $OUT ]] || echo "# swap_compare $(date -Is) workload=$WORKLOAD working_set=$WS_BYTES local_pct=$LOCAL_PCT ops=$OPS threads=$THREADS repeat=$REPEAT zram=$ZRAM_DEV/$ZRAM_ALG cgroup=v$CG_VER limit=$CG_LIMIT slack=$SLACK_BYTES" >>"$OUT"

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
    python3 - "$cfg" "$run" "$REPEAT" "$delta" "$PAGE" "$extra" "$json" <<'PY' >&2
import json, sys
cfg, run, rep, delta, page, extra, line = sys.argv[1:8]
d = json.loads(line)
ops = float(d["ops"]); s = float(d.get("seconds") or 0)
ns = s * 1e9 / ops if s > 0 else 1e9 / float(d["ops_per_sec"])
print(f"  [run {run}/{rep}] {cfg:<11} {ns:10.1f} ns/op  {1e9/ns:12.0f} ops/s  "
      f"faults={d.get('faults','-')} evictions={d.get('evictions','-')}  "
      f"swapout={int(delta)*int(page)/2**20:.1f} MiB{extra}")
PY
    if [[ -n $OUT ]]; then
        echo "# config=$cfg run=$run pswpout_delta_pages=$delta" >>"$OUT"
        echo "$json" >>"$OUT"
    fi
}

log "running $REPEAT x {local-swap, farmem-sw, local-ideal}: workload=$WORKLOAD ws=$WS_FMT local=${LOCAL_PCT}% ops=$OPS threads=$THREADS"
for ((r = 1; r <= REPEAT; r++)); do
    run_one local-swap  "$r" 1 -- --mode local "${COMMON[@]}" --local-mem "${LOCAL_PCT}%"
    run_one farmem-sw   "$r" 0 -- --mode sw    "${COMMON[@]}" --local-mem "${LOCAL_PCT}%"
    if (( HW )); then
        RUN_ENV=FARMEM_HW_FAULTS=signal run_one farmem-hw-sig "$r" 0 -- --mode hw "${COMMON[@]}" --local-mem "${LOCAL_PCT}%"
        RUN_ENV=FARMEM_HW_FAULTS=thread run_one farmem-hw-thr "$r" 0 -- --mode hw "${COMMON[@]}" --local-mem "${LOCAL_PCT}%"
    fi
    run_one local-ideal "$r" 0 -- --mode local "${COMMON[@]}" --local-mem "${LOCAL_PCT}%"
done

# --- summary --------------------------------------------------------------------
SUMMARY=$(python3 - "$RESULTS" "$WORKLOAD" "$WS_BYTES" "$LOCAL_PCT" "$REPEAT" "$CG_LIMIT" "$SLACK_BYTES" \
                    "$ZRAM_DEV" "$ZRAM_ALG" "$CG_VER" "$PAGE" <<'PY'
import json, statistics, sys
path, workload, ws, pct, rep, limit, slack, zdev, zalg, cgver, page = sys.argv[1:12]
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
out.append(f"   Linux swap: zram /dev/{zdev} ({zalg}), cgroup v{cgver} limit {limit/2**20:.1f} MiB "
           f"= {pct}% of working set + {slack/2**20:.0f} MiB slack for the binary")
out.append(f"   {'config':<12}{'median ns/op':>14}{'min':>11}{'max':>11}{'median ops/s':>15}{'swapout/run':>14}")
names = {"local-swap": "local-swap", "farmem-sw": "farmem-sw", "local-ideal": "local-ideal"}
for k in ("local-swap", "farmem-sw", "farmem-hw-sig", "farmem-hw-thr", "local-ideal"):
    v = rows.get(k, [])
    if not v: continue
    out.append(f"   {k:<12}{med[k]:>14.1f}{min(v):>11.1f}{max(v):>11.1f}{1e9/med[k]:>15.0f}"
               f"{statistics.median(swapped[k])/2**20:>10.1f} MiB")
sp = med["local-swap"] / med["farmem-sw"]
sl = med["farmem-sw"] / med["local-ideal"]
out.append(f"   farmem sw speedup vs Linux swap (zram): {sp:.2f}x   "
           f"farmem sw slowdown vs all-local: {sl:.2f}x")
summary = {"workload": workload, "working_set_bytes": ws, "local_pct": pct,
           "swap_ns_per_op": round(med["local-swap"], 2), "sw_ns_per_op": round(med["farmem-sw"], 2),
           "local_ns_per_op": round(med["local-ideal"], 2),
           "sw_speedup_vs_swap": round(sp, 4), "sw_slowdown_vs_local": round(sl, 4),
           "runs": int(rep)}
for k, name in (("farmem-hw-sig", "hw_signal"), ("farmem-hw-thr", "hw_thread")):
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
