#!/usr/bin/env bash
# farmem-kv with a quarter of its values local against farmem-kv with all of
# them local, same load, interleaved in one run; prints the median ns per key
# read of each. Usage: bench/kv_compare.sh [--csv FILE] [KEYS] [VALUE_SIZE] [OPS] [REPEAT]
#   --csv FILE: one row per measured load appended to FILE (the header when it is new):
#     bench,config,workload,transport,local_mib,keys,value_size,connections,repetition,
#     ns_per_key,keys_per_sec,hit_rate,p50_us,p99_us
#     (config 25%-local or all-local as printed; local_mib is farmem-kv --local-mem;
#     transport is farmem-kv's memory server, FARMEM_BACKEND or shm; then farmem-kv-load's JSON)
set -euo pipefail
CSV="" ARGS=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --csv) [[ $# -ge 2 ]] || { echo "kv_compare: --csv needs a file" >&2; exit 2; }
      CSV=$2; shift 2 ;;
    -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) ARGS+=("$1"); shift ;;
  esac
done
set -- "${ARGS[@]}"
[[ -z $CSV ]] || : >>"$CSV" || { echo "kv_compare: cannot write --csv file $CSV" >&2; exit 2; }
KEYS=${1:-100000} VSIZE=${2:-4096} OPS=${3:-50000} REPEAT=${4:-3}
B=${BUILD:-build}
KV=$B/apps/farmem-kv/farmem-kv LOAD=$B/bench/farmem-kv-load
[[ -x $KV && -x $LOAD ]] || { echo "kv_compare: build first (ninja -C $B)" >&2; exit 2; }
data_mib=$(( (KEYS * VSIZE) >> 20 ))
quarter=$(( data_mib / 4 )); (( quarter >= 8 )) || quarter=8
all=$(( data_mib * 2 + 64 ))  # chunks round values up to a power of two
declare -A results
tmp=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$tmp"' EXIT

run() {  # run LABEL LOCAL_MIB WORKLOAD REPETITION
  local label=$1 mib=$2 wl=$3 rep=$4
  : >"$tmp/out"  # before the server starts: the loop below may read it first
  "$KV" --listen 127.0.0.1:0 --local-mem "${mib}M" --capacity "$(( data_mib * 2 + 64 ))M" >"$tmp/out" 2>&1 &
  local pid=$!
  local port=""
  for _ in $(seq 100); do
    port=$(sed -n 's/^farmem-kv: listening on 127.0.0.1:\([0-9]*\) .*/\1/p' "$tmp/out"); [[ -n $port ]] && break; sleep 0.1
  done
  [[ -n $port ]] || { echo "kv_compare: farmem-kv did not start: $(cat "$tmp/out")" >&2; exit 1; }
  "$LOAD" --server "127.0.0.1:$port" --keys "$KEYS" --value-size "$VSIZE" --connections 8 --ops 2000 >/dev/null
  local json
  json=$("$LOAD" --server "127.0.0.1:$port" --keys "$KEYS" --value-size "$VSIZE" --connections 8 --ops "$OPS" \
         --workload "$wl" --no-load)
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  echo "$label $wl: $json" >&2
  results["$label $wl"]+="$(sed -n 's/.*"ns_per_key":\([0-9.]*\).*/\1/p' <<<"$json") "
  [[ -z $CSV ]] || /usr/bin/python3 - "$CSV" "$label" "$wl" "${FARMEM_BACKEND:-shm}" "$mib" "$rep" "$json" <<'PY'
import json, os, sys
csv, label, wl, transport, mib, rep, line = sys.argv[1:8]
d = json.loads(line)
with open(csv, "a") as f:  # the run's configuration, then what farmem-kv-load measured
    if os.path.getsize(csv) == 0:
        f.write("bench,config,workload,transport,local_mib,keys,value_size,connections,repetition,"
                "ns_per_key,keys_per_sec,hit_rate,p50_us,p99_us\n")
    row = ["kv_compare", label, wl, transport.split("://")[0], mib, d["keys"], d["value_size"], d["connections"], rep,
           d["ns_per_key"], d["keys_per_sec"], d["hit_rate"], d["p50_us"], d["p99_us"]]
    f.write(",".join(map(str, row)) + "\n")
PY
}

for r in $(seq "$REPEAT"); do
  for wl in uniform zipf; do
    run "25%-local" "$quarter" "$wl" "$r"
    run "all-local" "$all" "$wl" "$r"
  done
done
median() { tr ' ' '\n' | sed '/^$/d' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "keys=$KEYS value_size=$VSIZE data=${data_mib}MiB ops=$OPS repeat=$REPEAT (median ns per key read)"
for wl in uniform zipf; do
  q=$(median <<<"${results["25%-local $wl"]}") a=$(median <<<"${results["all-local $wl"]}")
  printf '%-8s 25%%-local %8s  all-local %8s  ratio %s\n' "$wl" "$q" "$a" "$(awk -v q="$q" -v a="$a" 'BEGIN {printf "%.2f", q / a}')"
done
