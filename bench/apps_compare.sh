#!/usr/bin/env bash
# bench/apps_compare.sh -- real, unmodified programs at the same memory budget:
#   plain   : no limit (measures each program's peak resident memory)
#   swap    : Linux swap to zram inside a memory cgroup whose limit = the budget (root only)
#   farmem  : farmem-run --local-mem BUDGET -- PROGRAM
# The budget is a percentage (--points, default 25) of the program's plain peak
# RSS, measured by a first plain run (rep 0, the reference output; not in the
# medians). Then --repeat rounds, each running every program plain, under swap
# and under farmem-run, interleaved. One CSV row per run, with its configuration
# (program, config, transport, budget point, repetition); a Markdown table of
# medians at the end, and with --png the figure (bench/plot.py: grouped bars). Everything set up (zram swap device, memory cgroup, work
# directory, servers) is torn down on EXIT/INT/TERM.
set -euo pipefail

PROG=${0##*/}
ORIG_ARGS=("$@")
SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd -- "$SCRIPT_DIR/.." && pwd)

ALL_PROGRAMS=python,sort,sqlite,redis,gcc,bfs,awk
PROGRAMS=$ALL_PROGRAMS
REPEAT=3
POINTS=25
OUT=""
MD=""
PNG=""
TIMEOUT=auto
FARMEM_RUN=$REPO_ROOT/build/apps/farmem-run/farmem-run
INSTALL=1
STATS_RUN=1
KEEP=0
WORKDIR=""
COMPRESS=""      # --compress CODEC: farmem-run --compress CODEC (zram compresses with its own lz4)
SWAP_FILE_DIR="" # --swap-file DIR: swap to a file in DIR, farmem-run on file://DIR (the SSD tier)
PY=/usr/bin/python3

usage() {
    cat <<EOF
usage: $PROG [--repeat N] [--programs LIST] [--points 25,50] [--out CSV] [--md FILE]
             [--png FILE] [--timeout SEC|auto] [--farmem-run PATH] [--workdir DIR] [--keep]
             [--no-install] [--no-stats-run] [--compress CODEC] [--swap-file DIR]

Runs real, unmodified programs three ways at the same memory budget, interleaved:
  plain   no limit
  swap    Linux swap to zram, in a memory cgroup whose limit is the budget
          (needs root: zram swap device + memory cgroup; without root this
          configuration is skipped and the script says so)
  farmem  farmem-run --local-mem BUDGET -- PROGRAM
BUDGET = each --points percentage of the program's peak RSS in a plain run.
Records per run: wall time, peak RSS (getrusage of the waited program), major
faults, exit status (OOM kills under swap: "swap could not finish"), whether
stdout is byte-identical to the plain run.

Programs (--programs, comma-separated; default $ALL_PROGRAMS):
  python  python3 building and walking 500k dicts with lists
  sort    sort -n -S 1G --parallel=1 of 3M numbers
  sqlite  sqlite3 :memory:, 1M rows, an index, aggregates and a self-join
  redis   redis-server loaded with 200k 1000-byte values (redis-cli --pipe), then
          400k random GETs from redis-benchmark (-P 16, 20 clients); output:
          DBSIZE and DEBUG DIGEST (redis-benchmark's own SETs are not
          deterministic, so the writes come from the pipe)
  gcc     gcc -O2 -S of a generated 3 MB C file (large tables, 30 functions)
  bfs     pure-python BFS on a random graph (250k vertices, 750k edges)
  awk     mawk summing 1M lines by 632k numeric keys
As root, missing Debian packages (redis-server, redis-tools, sqlite3, gcc) are
installed with apt-get unless --no-install; otherwise that program is SKIPPED.

Options:
  --repeat N        rounds (default $REPEAT)
  --points LIST     budgets in % of plain peak RSS (default $POINTS; e.g. 25,50)
  --out CSV         one row per run (default: apps_compare-DATE.csv in the current directory):
                    program,config,transport,point_pct,rep,budget_mib,wall_s,peak_rss_mib,
                    major_faults,minor_faults,exit,status,output_identical,swapout_mib,
                    cgroup_peak_mib,out_bytes,timeout_s (config plain/swap/farmem; transport
                    none, zram, or farmem-run's FARMEM_BACKEND, default shm; rep 0 is the
                    reference run)
  --md FILE         also write the Markdown table there
  --png FILE        also draw the CSV (bench/plot.py, python3-matplotlib): wall time per
                    program normalized to plain, a bar per configuration
  --timeout SEC     per run; auto = max(30, 15 x the program's plain time). A run
                    that times out is not finished; its configuration is not
                    retried in later rounds at that point. At 25% python, bfs
                    and awk thrash under farmem-run for 2-9 minutes here (swap
                    is OOM-killed): give them --timeout 900 to see them finish
  --farmem-run PATH default build/apps/farmem-run/farmem-run
  --compress CODEC  farmem-run --compress CODEC (lz4, zstd[:LEVEL]): the compressed tier
                    against zram, which compresses swapped pages with its own codec
  --swap-file DIR   the SSD tier instead: Linux swap to a swap file made in DIR,
                    farmem-run --backend file://DIR (the same filesystem)
  --workdir DIR     inputs and logs (default: a new directory under /var/tmp)
  --keep            keep the work directory
  --no-stats-run    skip the final FARMEM_STATS=1 run of the program with the
                    lowest farmem-run/swap speedup among those where both finished
                    (else the largest farmem-run/plain slowdown)
EOF
}

die()  { echo "$PROG: error: $*" >&2; exit 2; }
warn() { echo "$PROG: WARNING: $*" >&2; }
log()  { echo "$PROG: $*" >&2; }

need_arg() { [[ $# -ge 2 && -n $2 ]] || die "option $1 needs a value (see --help)"; }
while [[ $# -gt 0 ]]; do
    case $1 in
        --repeat)     need_arg "$@"; REPEAT=$2; shift 2 ;;
        --programs)   need_arg "$@"; PROGRAMS=$2; shift 2 ;;
        --points)     need_arg "$@"; POINTS=$2; shift 2 ;;
        --out)        need_arg "$@"; OUT=$2; shift 2 ;;
        --md)         need_arg "$@"; MD=$2; shift 2 ;;
        --png)        need_arg "$@"; PNG=$2; shift 2 ;;
        --timeout)    need_arg "$@"; TIMEOUT=$2; shift 2 ;;
        --farmem-run) need_arg "$@"; FARMEM_RUN=$2; shift 2 ;;
        --workdir)    need_arg "$@"; WORKDIR=$2; shift 2 ;;
        --keep)       KEEP=1; shift ;;
        --no-install) INSTALL=0; shift ;;
        --no-stats-run) STATS_RUN=0; shift ;;
        --compress)   need_arg "$@"; COMPRESS=$2; shift 2 ;;
        --swap-file)  need_arg "$@"; SWAP_FILE_DIR=$2; shift 2 ;;
        -h|--help)    usage; exit 0 ;;
        *) echo "$PROG: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done

is_posint() { [[ $1 =~ ^[1-9][0-9]*$ ]]; }
is_posint "$REPEAT" || die "--repeat must be a positive integer"
IFS=, read -r -a POINT_LIST <<<"$POINTS"
for p in "${POINT_LIST[@]}"; do
    is_posint "$p" && (( p < 100 )) || die "--points takes percentages 1..99, comma-separated (got '$POINTS')"
done
IFS=, read -r -a PROG_LIST <<<"$PROGRAMS"
for p in "${PROG_LIST[@]}"; do
    [[ ,$ALL_PROGRAMS, == *,$p,* ]] || die "unknown program '$p' in --programs (known: $ALL_PROGRAMS)"
done
[[ $TIMEOUT == auto ]] || is_posint "$TIMEOUT" || die "--timeout must be a number of seconds or auto"
[[ -x $FARMEM_RUN ]] || die "farmem-run not found at $FARMEM_RUN (build: BUILD_DIR=build scripts/setup.sh, or pass --farmem-run PATH)"
[[ -x $PY ]] || die "$PY is required (apt-get install python3)"
[[ -f $SCRIPT_DIR/apps_measure.py ]] || die "$SCRIPT_DIR/apps_measure.py is missing"
[[ -n $OUT ]] || OUT=$PWD/apps_compare-$(date +%Y%m%d-%H%M%S).csv
: >"$OUT" 2>/dev/null || die "cannot write --out file '$OUT'"
if [[ -n $PNG ]]; then
    "$PY" -c 'import matplotlib' 2>/dev/null ||
        die "--png needs python3-matplotlib: apt-get install python3-matplotlib (or scripts/setup.sh --plot)"
    [[ -d $(dirname -- "$PNG") && -w $(dirname -- "$PNG") ]] || die "cannot write --png file '$PNG' (its directory is missing or read-only)"
fi
FARMEM_TRANSPORT=${FARMEM_BACKEND:-shm}  # farmem-run's; the CSV's transport column
FARMEM_OPTS=()
if [[ -n $SWAP_FILE_DIR ]]; then
    SWAP_FILE_DIR=$(cd -- "$SWAP_FILE_DIR" 2>/dev/null && pwd) || die "--swap-file: no such directory"
    FARMEM_TRANSPORT=file://$SWAP_FILE_DIR
    FARMEM_OPTS+=(--backend "$FARMEM_TRANSPORT")
fi
if [[ -n $COMPRESS ]]; then
    "$FARMEM_RUN" --compress "$COMPRESS" -- true || die "farmem-run refused --compress $COMPRESS (see above)"
    FARMEM_TRANSPORT+=+$COMPRESS
    FARMEM_OPTS+=(--compress "$COMPRESS")
fi

SWAP=1
if (( EUID != 0 )); then
    SWAP=0
    warn "not root: the Linux swap configuration (zram swap device + memory cgroup) needs root and is SKIPPED; only plain and farmem-run are measured. For all three: sudo $0 ${ORIG_ARGS[*]}"
fi

# --- teardown -------------------------------------------------------------------
source "$SCRIPT_DIR/swap_env.sh"
CHILD=""
WORK=""
WORK_MADE=0
CLEANED=0
cleanup() {
    local rc=$?
    (( CLEANED )) && return 0
    CLEANED=1
    set +e
    trap '' INT TERM
    if [[ -n $CHILD ]] && kill -0 "$CHILD" 2>/dev/null; then
        kill -TERM "$CHILD" 2>/dev/null      # apps_measure.py kills the program's session
        for _ in $(seq 50); do kill -0 "$CHILD" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$CHILD" 2>/dev/null
        wait "$CHILD" 2>/dev/null
    fi
    swapenv_teardown
    if [[ -n $WORK ]] && (( WORK_MADE && ! KEEP )); then rm -rf "$WORK"; fi
    [[ -n $WORK ]] && (( KEEP )) && log "kept $WORK"
    log "teardown done (zram ${ZRAM_DEV:-none}, cgroup ${CG_DIR:-none})"
    return "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

if [[ -z $WORKDIR ]]; then
    WORK=$(mktemp -d /var/tmp/farmem-apps.XXXXXX); WORK_MADE=1
else
    mkdir -p "$WORKDIR" && WORK=$(cd "$WORKDIR" && pwd) || die "cannot create --workdir $WORKDIR"
fi
mkdir -p "$WORK/logs"

# --- packages -------------------------------------------------------------------
declare -A SKIP=()
need_pkg() {  # program, then "binary:package" pairs
    local prog=$1 b pkg missing=()
    shift
    for bp in "$@"; do
        b=${bp%%:*}; pkg=${bp#*:}
        command -v "$b" >/dev/null || missing+=("$pkg")
    done
    (( ${#missing[@]} )) || return 0
    if (( EUID == 0 && INSTALL )); then
        log "installing missing Debian packages for $prog: ${missing[*]}"
        if DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$WORK/logs/apt.log" 2>&1 \
            || { apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$WORK/logs/apt.log" 2>&1; }; then
            return 0
        fi
        SKIP[$prog]="apt-get install ${missing[*]} failed (see $WORK/logs/apt.log)"
    else
        SKIP[$prog]="needs Debian packages ${missing[*]} (run as root to install them, or apt-get install ${missing[*]})"
    fi
}
for p in "${PROG_LIST[@]}"; do
    case $p in
        sort)   need_pkg sort sort:coreutils ;;
        sqlite) need_pkg sqlite sqlite3:sqlite3 ;;
        redis)  need_pkg redis redis-server:redis-server redis-benchmark:redis-tools redis-cli:redis-tools ;;
        gcc)    need_pkg gcc gcc:gcc ;;
        awk)    need_pkg awk awk:mawk ;;
    esac
done

# --- workloads ------------------------------------------------------------------
# prepare: inputs, generated once with fixed seeds
log "generating inputs in $WORK"
cat >"$WORK/objects.py" <<'EOF'
import random
random.seed(11)
N = 500_000
recs = []
index = {}
for i in range(N):
    r = {"id": i, "name": "user%07d" % i, "tags": [i % 7, i % 11, i % 13], "score": (i * 2654435761) % 1000003}
    recs.append(r)
    index[r["name"]] = r
order = list(range(N))
random.shuffle(order)
tot = 0
for j in order:
    r = index["user%07d" % j]
    tot += r["score"] + r["tags"][j % 3]
groups = {}
for r in recs:
    groups.setdefault(r["score"] % 1000, []).append(r["id"])
print(N, tot, len(groups), sum(len(v) for v in groups.values()), max(len(v) for v in groups.values()))
EOF
cat >"$WORK/bfs.py" <<'EOF'
import random
from collections import deque
random.seed(5)
V, E = 250_000, 750_000
rnd = random.randrange
adj = [[] for _ in range(V)]
for _ in range(E):
    a = rnd(V); b = rnd(V)
    adj[a].append(b); adj[b].append(a)
def bfs(s):
    dist = [-1] * V
    dist[s] = 0
    q = deque([s])
    while q:
        u = q.popleft()
        du = dist[u] + 1
        for w in adj[u]:
            if dist[w] < 0:
                dist[w] = du
                q.append(w)
    return dist
for s in (0, V // 2):
    d = bfs(s)
    hist = {}
    for x in d:
        hist[x] = hist.get(x, 0) + 1
    print(s, sorted(hist.items()))
EOF
cat >"$WORK/db.sql" <<'EOF'
PRAGMA cache_size = -1000000;
CREATE TABLE t(id INTEGER PRIMARY KEY, k INTEGER, g INTEGER, v TEXT);
WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 1000000)
INSERT INTO t SELECT i, (i * 7919) % 1000003, i % 1000, printf('%.100c', char(65 + i % 26)) FROM c;
CREATE INDEX tk ON t(k);
SELECT count(*), sum(k), sum(length(v)) FROM t;
SELECT g, count(*), sum(k) FROM t WHERE k < 200000 GROUP BY g ORDER BY g LIMIT 5;
SELECT sum(t1.id) FROM t AS t1 JOIN t AS t2 ON t2.k = t1.id WHERE t1.id % 7 = 0;
SELECT v FROM t WHERE id IN (1, 99999, 1000000);
EOF
"$PY" - "$WORK" <<'EOF'
import random, sys
w = sys.argv[1]
random.seed(3)
with open(w + "/nums.txt", "w") as f:
    f.write("".join("%d\n" % random.randrange(10**12) for _ in range(3_000_000)))
random.seed(4)
with open(w + "/kv.txt", "w") as f:
    f.write("".join("%d %d\n" % (random.randrange(1_000_000) * 7919 % 10000019, random.randrange(1000))
                    for _ in range(1_000_000)))
random.seed(9)
NT, TL, NF = 8, 50000, 30
out = ["#include <stdint.h>"]
for t in range(NT):
    out.append("const uint32_t tab%d[%d] = {" % (t, TL) + ",".join(str(random.randrange(1 << 32)) + "u" for _ in range(TL)) + "};")
for f in range(NF):
    out.append("uint64_t f%d(uint64_t x, uint64_t y) {" % f)
    for j in range(60):
        out.append("  x = (x %s (y >> %d)) * %dull + tab%d[(x ^ %d) %% %d]; y ^= x << %d;" % (
            random.choice("+^-|&"), j % 29, random.randrange(1, 1 << 30), random.randrange(NT), j, TL, 1 + j % 17))
    out.append("  return x + y;")
    out.append("}")
open(w + "/big.c", "w").write("\n".join(out) + "\n")
v = b"x" * 1000
with open(w + "/load.resp", "wb") as f:   # 200k SETs in the redis protocol, for redis-cli --pipe
    for i in range(200000):
        k = b"key:%012d" % i
        f.write(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$1000\r\n%s\r\n" % (len(k), k, v))
EOF

RSOCK=$WORK/redis.sock
# the redis client side: waits for the server, loads and reads, prints what must
# not change, stops the server. Runs outside the cgroup and without the shim.
cat >"$WORK/redis_driver.sh" <<EOF
S=$RSOCK
for i in \$(seq 600); do redis-cli -s \$S ping 2>/dev/null | grep -q PONG && break; sleep 0.05; done
redis-cli -s \$S --pipe <$WORK/load.resp >>$WORK/logs/redis-benchmark.log 2>&1
redis-benchmark -s \$S -q -t get -n 400000 -r 200000 -P 16 -c 20 >>$WORK/logs/redis-benchmark.log 2>&1
redis-cli -s \$S dbsize
redis-cli -s \$S debug digest
redis-cli -s \$S shutdown nosave >/dev/null 2>&1 || true
EOF

# prog_cmd NAME: sets CMD (the program and its arguments) and DRIVER
prog_cmd() {
    DRIVER=""
    case $1 in
        python) CMD=("$PY" "$WORK/objects.py") ;;
        bfs)    CMD=("$PY" "$WORK/bfs.py") ;;
        sort)   CMD=(env LC_ALL=C sort -n -S 1G --parallel=1 "$WORK/nums.txt") ;;
        sqlite) CMD=(sqlite3 :memory: ".read $WORK/db.sql") ;;
        gcc)    CMD=(gcc -O2 -S -o - "$WORK/big.c") ;;
        awk)    CMD=(awk '{s[$1]+=$2; c[$1]++} END {n=0; t=0; for (k in s) {n++; t=(t*31+s[k]*c[k])%1000000007}; print n, t}' "$WORK/kv.txt") ;;
        redis)  CMD=(redis-server --port 0 --unixsocket "$RSOCK" --save "" --appendonly no
                     --enable-debug-command local --daemonize no --loglevel warning)
                DRIVER="bash $WORK/redis_driver.sh" ;;
    esac
}

# --- swap environment ---------------------------------------------------------------
if (( SWAP )); then
    if [[ -n $SWAP_FILE_DIR ]]; then swapenv_file_setup "$SWAP_FILE_DIR" $((8 << 30))
    else swapenv_zram_setup $((8 << 30)); fi
    swapenv_cgroup_setup "farmem-apps-$$" $((1 << 30))
    log "cgroup v$CG_VER: $CG_DIR (its limit is set to each run's budget)"
fi

# --- runs ---------------------------------------------------------------------------
echo "program,config,transport,point_pct,rep,budget_mib,wall_s,peak_rss_mib,major_faults,minor_faults,exit,status,output_identical,swapout_mib,cgroup_peak_mib,out_bytes,timeout_s" >"$OUT"
declare -A REF_SHA=() PEAK_KIB=() PLAIN_S=() TMO=() GAVE_UP=()
PAGE=$(getconf PAGESIZE)

# transport_of CONFIG: where the pages that do not fit go, for the CSV.
transport_of() {
    case $1 in
        swap) [[ -n $SWAP_FILE_DIR ]] && echo swapfile || echo zram ;;
        farmem) echo "\"$FARMEM_TRANSPORT\"" ;;
        *) echo none ;;
    esac
}

# run_one PROGRAM CONFIG POINT REP BUDGET_MIB
run_one() {
    local prog=$1 cfg=$2 point=$3 rep=$4 budget=$5
    local tmo=${TMO[$prog]:-600} logf=$WORK/logs/$prog.$cfg.$point.$rep.err
    local -a pre=() mopts=(--timeout "$tmo" --log "$logf")
    [[ -n $DRIVER ]] && mopts+=(--driver "$DRIVER")
    local sw0=0 oom0=0
    case $cfg in
        swap)
            swapenv_cgroup_limit $((budget << 20))
            cg_reset_peak
            sw0=$(pswpout); oom0=$(cg_oom_kills)
            mopts+=(--cgroup-procs "$CG_DIR/cgroup.procs") ;;
        farmem)
            pre=("$FARMEM_RUN" --local-mem "${budget}M" "${FARMEM_OPTS[@]}" --) ;;
    esac
    rm -f "$RSOCK"
    local line rc=0
    "$PY" "$SCRIPT_DIR/apps_measure.py" "${mopts[@]}" -- "${pre[@]}" "${CMD[@]}" >"$WORK/m.out" &
    CHILD=$!
    wait "$CHILD" || rc=$?
    CHILD=""
    line=$(tail -n 1 "$WORK/m.out")
    (( rc == 0 )) && [[ -n $line ]] || die "apps_measure.py failed ($rc) for $prog/$cfg"
    local wall maxrss majflt minflt code sig tmoed sha nbytes
    IFS=$'\t' read -r wall maxrss majflt minflt code sig tmoed sha nbytes <<<"$line"
    local swapout="" cgpeak="" status exitv
    if [[ $cfg == swap ]]; then
        swapout=$(awk -v d=$(( $(pswpout) - sw0 )) -v p="$PAGE" 'BEGIN{printf "%.1f", d*p/1048576}')
        cgpeak=$(awk -v b="$(cg_peak)" 'BEGIN{printf "%.1f", b/1048576}')
    fi
    if (( sig )); then exitv="signal $sig"; else exitv=$code; fi
    if (( tmoed )); then status="timeout"
    elif [[ $cfg == swap ]] && (( $(cg_oom_kills) > oom0 )); then status="oom"   # the program or one of its children (gcc's cc1)
    elif (( sig )); then status="signal"
    elif (( code != 0 )); then status="failed"
    else status="ok"; fi
    local same=n/a
    if [[ $status == ok ]]; then
        if [[ -z ${REF_SHA[$prog]:-} ]]; then REF_SHA[$prog]=$sha; same=reference
        elif [[ $sha == "${REF_SHA[$prog]}" ]]; then same=yes
        else same=no; fi
    fi
    local rss_mib
    rss_mib=$(awk -v k="$maxrss" 'BEGIN{printf "%.1f", k/1024}')
    echo "$prog,$cfg,$(transport_of "$cfg"),$point,$rep,$budget,$wall,$rss_mib,$majflt,$minflt,\"$exitv\",$status,$same,$swapout,$cgpeak,$nbytes,$tmo" >>"$OUT"
    local note=""
    case $status in
        timeout) note="  NOT FINISHED: killed after ${tmo}s" ;;
        oom)     note="  swap could not finish: OOM-killed in the ${budget} MiB cgroup" ;;
        signal|failed) note="  FAILED ($exitv), stderr: $(tail -n 2 "$logf" | tr '\n' ' ' | cut -c1-200)" ;;
    esac
    [[ $same == no ]] && note+="  OUTPUT DIFFERS from the plain run"
    printf '  [%s rep %s] %-6s %-6s %3s%% budget %5s MiB: %8.2f s  peak RSS %7s MiB  majflt %-7s %s%s%s\n' \
        "$(date +%H:%M:%S)" "$rep" "$prog" "$cfg" "$point" "$budget" "$wall" "$rss_mib" "$majflt" \
        "${swapout:+swapout ${swapout} MiB }" "${cgpeak:+cg-peak ${cgpeak} MiB}" "$note" >&2
    LAST_STATUS=$status LAST_WALL=$wall LAST_RSS=$maxrss
}

ACTIVE=()
for p in "${PROG_LIST[@]}"; do
    if [[ -n ${SKIP[$p]:-} ]]; then log "SKIP $p: ${SKIP[$p]}"; continue; fi
    ACTIVE+=("$p")
done
(( ${#ACTIVE[@]} )) || die "no program left to run"

log "rep 0: one plain run per program (peak RSS -> budgets, reference output)"
for p in "${ACTIVE[@]}"; do
    prog_cmd "$p"
    TMO[$p]=600
    run_one "$p" plain 100 0 0
    [[ $LAST_STATUS == ok ]] || die "$p failed in its plain run (see $WORK/logs, rerun with --keep)"
    PEAK_KIB[$p]=$LAST_RSS
    PLAIN_S[$p]=$LAST_WALL
    if [[ $TIMEOUT == auto ]]; then
        TMO[$p]=$(awk -v w="$LAST_WALL" 'BEGIN{t=int(15*w+0.5); if (t<30) t=30; print t}')
    else
        TMO[$p]=$TIMEOUT
    fi
done
budget_of() {  # program, point -> MiB
    local b=$(( PEAK_KIB[$1] * $2 / 100 / 1024 ))
    (( b >= 8 )) || b=8   # farmem's minimum
    echo "$b"
}
CONFIGS=(farmem)
(( SWAP )) && CONFIGS=(swap farmem)
log "running $REPEAT round(s) of {plain, ${CONFIGS[*]}} x points {$POINTS}% for: ${ACTIVE[*]}; CSV: $OUT"
for ((r = 1; r <= REPEAT; r++)); do
    for p in "${ACTIVE[@]}"; do
        prog_cmd "$p"
        run_one "$p" plain 100 "$r" 0
        for pt in "${POINT_LIST[@]}"; do
            b=$(budget_of "$p" "$pt")
            order=("${CONFIGS[@]}")
            (( r % 2 == 0 && ${#order[@]} == 2 )) && order=(farmem swap)   # alternate who goes first
            for cfg in "${order[@]}"; do
                key=$p/$cfg/$pt
                if [[ -n ${GAVE_UP[$key]:-} ]]; then
                    echo "$p,$cfg,$(transport_of "$cfg"),$pt,$r,$b,,,,,,skipped,n/a,,,,${TMO[$p]}" >>"$OUT"
                    log "  [rep $r] $p $cfg $pt%: skipped (${GAVE_UP[$key]} in an earlier round)"
                    continue
                fi
                run_one "$p" "$cfg" "$pt" "$r" "$b"
                [[ $LAST_STATUS == timeout || $LAST_STATUS == oom ]] && GAVE_UP[$key]=$LAST_STATUS
            done
        done
    done
done

# --- summary ----------------------------------------------------------------------------
SUMMARY=$("$PY" - "$OUT" "$POINTS" "$REPEAT" "$SWAP" <<'EOF'
import csv, math, statistics, sys
path, points, rep, swap = sys.argv[1], [int(p) for p in sys.argv[2].split(",")], int(sys.argv[3]), int(sys.argv[4])
rows = list(csv.DictReader(open(path)))
progs = []
for r in rows:
    if r["program"] not in progs:
        progs.append(r["program"])
def sel(p, cfg, pt):
    return [r for r in rows if r["program"] == p and r["config"] == cfg and int(r["rep"]) > 0
            and (cfg == "plain" or int(r["point_pct"]) == pt)]
def med(rs, key):
    v = [float(r[key]) for r in rs if r["status"] == "ok"]
    return statistics.median(v) if v else None
def fmt(x, nd=2):
    return "—" if x is None else f"{x:.{nd}f}"
out = []
worst = None
slow = None
for pt in points:
    out.append(f"Budget {pt}% of plain peak RSS, medians of {rep} runs (time in s, RSS in MiB):")
    out.append("")
    cols = ["program", "plain peak RSS", "budget", "plain s"]
    if swap: cols += ["swap s"]
    cols += ["farmem-run s"]
    if swap: cols += ["farmem-run vs swap"]
    cols += ["farmem-run vs plain"]
    if swap: cols += ["swap peak RSS"]
    cols += ["farmem-run peak RSS"]
    if swap: cols += ["swap major faults"]
    cols += ["farmem-run major faults", "output identical", "not finished"]
    out.append("| " + " | ".join(cols) + " |")
    out.append("|" + " --- |" * len(cols))
    speedups = []
    for p in progs:
        pl = sel(p, "plain", pt); sw = sel(p, "swap", pt); fa = sel(p, "farmem", pt)
        ref = [r for r in rows if r["program"] == p and r["rep"] == "0"]
        budget = fa[0]["budget_mib"] if fa else "?"
        tp, ts, tf = med(pl, "wall_s"), med(sw, "wall_s"), med(fa, "wall_s")
        notes = []
        for name, rs in (("swap", sw), ("farmem-run", fa)):
            bad = [r for r in rs if r["status"] != "ok"]
            if bad:
                kinds = sorted(set(r["status"] for r in bad))
                txt = "/".join({"oom": "OOM-killed (swap could not finish)", "timeout": f"timed out at {bad[0]['timeout_s']} s",
                                "skipped": "skipped after that"}.get(k, k) for k in kinds)
                notes.append(f"{name}: {len(bad)}/{len(rs)} {txt}")
        ok = [r for r in sw + fa if r["status"] == "ok"]
        ident = "yes" if ok and all(r["output_identical"] == "yes" for r in ok) else ("—" if not ok else "NO")
        sp = None
        if swap:
            if ts is not None and tf is not None:
                sp = ts / tf
                speedups.append(sp)
                spt = f"{sp:.2f}x"
            elif ts is None and tf is not None and any(r["status"] == "timeout" for r in sw):
                lb = float(sw[0]["timeout_s"]) / tf
                spt = f"> {lb:.1f}x (swap did not finish)"
            elif ts is None and tf is not None and sw:
                spt = "only farmem-run finished"
            elif ts is not None and tf is None and fa and any(r["status"] == "timeout" for r in fa):
                ub = ts / float(fa[0]["timeout_s"])
                spt = f"< {ub:.2f}x (farmem-run did not finish)"
            else:
                spt = "—"
            if sp is not None and (worst is None or sp < worst[0]):
                worst = (sp, p, pt, budget)
        if tf is not None and tp and (slow is None or tf / tp > slow[0]):
            slow = (tf / tp, p, pt, budget)
        row = [p, fmt(float(ref[0]["peak_rss_mib"]) if ref else None, 0), budget, fmt(tp)]
        if swap: row += [fmt(ts)]
        row += [fmt(tf)]
        if swap: row += [spt]
        row += [f"{tf / tp:.2f}x slower" if tf and tp else "—"]
        if swap: row += [fmt(med(sw, "peak_rss_mib"), 0)]
        row += [fmt(med(fa, "peak_rss_mib"), 0)]
        if swap: row += [fmt(med(sw, "major_faults"), 0)]
        row += [fmt(med(fa, "major_faults"), 0), ident, "; ".join(notes) or "—"]
        out.append("| " + " | ".join(row) + " |")
    if swap and speedups:
        g = math.exp(sum(math.log(s) for s in speedups) / len(speedups))
        out.append("")
        out.append(f"Geometric mean of farmem-run's speedup over swap at {pt}%: **{g:.2f}x** "
                   f"({len(speedups)} programs where both finished; above 1 means farmem-run is faster)")
    out.append("")
if worst:
    print(f"#WORST {worst[1]} {worst[2]} {worst[3]} {worst[0]:.3f} farmem-run/swap speedup")
elif slow:
    print(f"#WORST {slow[1]} {slow[2]} {slow[3]} {slow[0]:.3f} farmem-run/plain slowdown")
print("\n".join(out))
EOF
)
WORST=$(grep '^#WORST' <<<"$SUMMARY" || true)
TABLE=$(grep -v '^#WORST' <<<"$SUMMARY")
echo
if (( SWAP )) && [[ -n $SWAP_FILE_DIR ]]; then SWAPDESC="swap file $SWAP_FILE in a memory cgroup v$CG_VER"
elif (( SWAP )); then SWAPDESC="zram /dev/$ZRAM_DEV ($ZRAM_ALG) in a memory cgroup v$CG_VER"; else SWAPDESC="skipped (not root)"; fi
echo "== apps_compare $(date -I): $(uname -r), $(nproc) vCPUs; swap: $SWAPDESC; CSV $OUT =="
echo
echo "$TABLE"
[[ -z $MD ]] || echo "$TABLE" >"$MD"
if [[ -n $PNG ]]; then
    "$PY" "$SCRIPT_DIR/plot.py" "$OUT" -o "$PNG" || warn "plot.py could not draw $OUT"
else
    log "draw it: bench/plot.py $OUT -o apps.png"
fi

# --- where the time goes for the worst one --------------------------------------------
if (( STATS_RUN )) && [[ -n $WORST ]]; then
    read -r _ wp wpt wb wsp wwhat <<<"$WORST"
    prog_cmd "$wp"
    log "FARMEM_STATS=1 run of the worst program where farmem-run finished: $wp at $wpt% ($wb MiB, $wwhat ${wsp})"
    rm -f "$RSOCK"
    FARMEM_STATS=1 "$PY" "$SCRIPT_DIR/apps_measure.py" --timeout "${TMO[$wp]}" --log "$WORK/logs/stats.err" \
        ${DRIVER:+--driver "$DRIVER"} -- "$FARMEM_RUN" --local-mem "${wb}M" "${FARMEM_OPTS[@]}" -- "${CMD[@]}" >"$WORK/m.out" &
    CHILD=$!; wait "$CHILD" || true; CHILD=""
    echo
    echo "FARMEM_STATS=1 farmem-run --local-mem ${wb}M -- $wp: $(cut -f1 "$WORK/m.out") s"
    grep -h '"farmem_stats"' "$WORK/logs/stats.err" || echo "(no statistics line; stderr: $(tail -n 3 "$WORK/logs/stats.err"))"
fi
