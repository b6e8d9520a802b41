#!/usr/bin/env bash
# farmem-kv against memcached with the same memory, and data 8x that memory.
# memcached -m M must evict (a get of an evicted key misses); farmem-kv
# --local-mem M keeps every value (the cold ones in far memory: here the shm
# memory server on this machine). For each of Zipf (theta 0.99) and uniform
# keys: hit rate, gets a second, p50/p99 of a get, and the memory each process
# used (peak RSS; for farmem-kv also its memory server's, where the far values live).
#
# Load: farmem-kv-load (bench/kv_load.cc; ours: the Debian tools have no Zipf
# key choice) stores every key once, then runs single-key gets, storing a
# missed value again as a look-aside cache's client does (the warm-up round
# of 1000 gets is not counted; the sets are, in time and p99); and memaslap
# (Debian's libmemcached-tools, not ours) runs its own uniform 90% get / 10% set
# mix over the same number of objects, reporting ops a second and its misses.
# ops/s: gets a second for farmem-kv-load, gets and sets for memaslap.
# Runs are interleaved (memcached, farmem-kv, ...) REPEAT times; medians shown.
#
# Usage: bench/kv_memcached_compare.sh [--csv FILE] [MEM_MIB (64)] [RATIO (8)] [VALUE_SIZE (4000)] [GETS (100000)] [REPEAT (3)]
#   --csv FILE: one row per measured run appended to FILE (the header when it is new):
#     bench,config,workload,transport,mem_mib,keys,value_size,repetition,
#     hit_rate,ops_per_sec,p50_us,p99_us,rss_mib,memory_server_mib
#     (config is the server, memcached or farmem-kv; workload the load as printed,
#     zipf, uniform or memaslap; transport none for memcached, farmem-kv's memory
#     server for farmem-kv (FARMEM_BACKEND or shm); mem_mib is -m / --local-mem;
#     p50/p99 are empty for memaslap, memory_server_mib 0 for memcached)
# MEMASLAP_TIME: how long each memaslap run lasts (default 20s).
set -euo pipefail
CSV="" ARGS=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --csv) [[ $# -ge 2 ]] || { echo "kv_memcached_compare: --csv needs a file" >&2; exit 2; }
      CSV=$2; shift 2 ;;
    -h|--help) sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) ARGS+=("$1"); shift ;;
  esac
done
set -- "${ARGS[@]}"
[[ -z $CSV ]] || : >>"$CSV" || { echo "kv_memcached_compare: cannot write --csv file $CSV" >&2; exit 2; }
MEM=${1:-64} RATIO=${2:-8} VSIZE=${3:-4000} GETS=${4:-100000} REPEAT=${5:-3}
B=${BUILD:-build}
KV=$B/apps/farmem-kv/farmem-kv LOAD=$B/bench/farmem-kv-load
[[ -x $KV && -x $LOAD ]] || { echo "kv_memcached_compare: build first (ninja -C $B)" >&2; exit 2; }
for t in memcached memcaslap; do
  command -v $t >/dev/null || { echo "kv_memcached_compare: $t is missing; run scripts/setup.sh (Debian: memcached libmemcached-tools)" >&2; exit 2; }
done
[[ $MEM =~ ^[0-9]+$ && $RATIO =~ ^[0-9]+$ && $VSIZE =~ ^[0-9]+$ && $GETS =~ ^[0-9]+$ && $REPEAT =~ ^[0-9]+$ ]] ||
  { echo "kv_memcached_compare: arguments are whole numbers: MEM_MIB RATIO VALUE_SIZE GETS REPEAT" >&2; exit 2; }
KEYS=$(( (MEM << 20) * RATIO / VSIZE ))
CAPACITY=$(( MEM * RATIO * 2 + 256 ))  # MiB of far slabs: values round up to a power of two
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$tmp"' EXIT
declare -A R  # "server workload field" -> values, one per round

free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
peak_mib() { awk '/^VmHWM/ {printf "%d", $2 / 1024}' "/proc/$1/status" 2>/dev/null || echo 0; }

start() {  # start SERVER: sets pid, port (and srv_pid, the memory server, for farmem-kv)
  port=$(free_port)
  srv_pid=""
  if [[ $1 == memcached ]]; then
    memcached -p "$port" -U 0 -l 127.0.0.1 -m "$MEM" -t 1 -u "$(id -un)" >"$tmp/mc.log" 2>&1 &
    pid=$!
  else
    "$KV" --listen "127.0.0.1:$port" --local-mem "${MEM}M" --capacity "${CAPACITY}M" >"$tmp/kv.log" 2>&1 &
    pid=$!
  fi
  for _ in $(seq 100); do
    /usr/bin/python3 -c "import socket; socket.create_connection(('127.0.0.1', $port))" 2>/dev/null && break
    sleep 0.1
  done
  [[ $1 == memcached ]] || srv_pid=$(pgrep -P "$pid" farmem-server || true)
}
field() { sed -n "s/.*\"$1\":\([0-9.]*\).*/\1/p" <<<"$2"; }
# csv_row SERVER WORKLOAD REPETITION HIT OPS_PER_SEC P50 P99 RSS MEMSERVER: --csv's row for one run
csv_row() {
  [[ -n $CSV ]] || return 0
  local transport=none
  [[ $1 == memcached ]] || transport=${FARMEM_BACKEND:-shm}
  [[ -s $CSV ]] || echo "bench,config,workload,transport,mem_mib,keys,value_size,repetition,hit_rate,ops_per_sec,p50_us,p99_us,rss_mib,memory_server_mib" >>"$CSV"
  echo "kv_memcached_compare,$1,$2,${transport%%://*},$MEM,$KEYS,$VSIZE,$3,$4,$5,$6,$7,$8,$9" >>"$CSV"
}

run_load() {  # run_load SERVER WORKLOAD REPETITION
  local server=$1 wl=$2 json rss srv
  start "$server"
  "$LOAD" --server "127.0.0.1:$port" --keys "$KEYS" --value-size "$VSIZE" --connections 4 --ops 1000 --batch 1 \
    --workload "$wl" --set-on-miss >/dev/null
  json=$("$LOAD" --server "127.0.0.1:$port" --keys "$KEYS" --value-size "$VSIZE" --connections 8 --ops "$GETS" \
    --batch 1 --workload "$wl" --set-on-miss --no-load)
  srv=$( [[ -n $srv_pid ]] && peak_mib "$srv_pid" || echo 0 )
  rss=$(peak_mib "$pid")
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  echo "$server $wl: $json rss=${rss}MiB memory_server=${srv}MiB" >&2
  R["$server $wl hit"]+="$(field hit_rate "$json") "
  R["$server $wl kps"]+="$(field keys_per_sec "$json") "
  R["$server $wl p50"]+="$(field p50_us "$json") "
  R["$server $wl p99"]+="$(field p99_us "$json") "
  R["$server $wl rss"]+="$rss "
  R["$server $wl srv"]+="$srv "
  csv_row "$server" "$wl" "$3" "$(field hit_rate "$json")" "$(field keys_per_sec "$json")" "$(field p50_us "$json")" \
    "$(field p99_us "$json")" "$rss" "$srv"
}

run_memaslap() {  # run_memaslap SERVER REPETITION: memaslap's uniform get/set mix over KEYS objects
  local server=$1 out rss srv conc=16
  start "$server"
  out=$(memcaslap -s "127.0.0.1:$port" -T 2 -c $conc -w "$(( KEYS / conc / 1024 ))k" -X "$VSIZE" -t "${MEMASLAP_TIME:-20s}" 2>&1 || true)
  srv=$( [[ -n $srv_pid ]] && peak_mib "$srv_pid" || echo 0 )
  rss=$(peak_mib "$pid")
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  local gets misses tps
  gets=$(sed -n 's/^cmd_get: *\([0-9]*\).*/\1/p' <<<"$out") misses=$(sed -n 's/^get_misses: *\([0-9]*\).*/\1/p' <<<"$out")
  tps=$(sed -n 's/.*TPS: *\([0-9]*\).*/\1/p' <<<"$out")
  echo "$server memaslap: cmd_get=$gets get_misses=$misses TPS=$tps rss=${rss}MiB memory_server=${srv}MiB" >&2
  R["$server memaslap hit"]+="$(awk -v g="$gets" -v m="$misses" 'BEGIN {printf "%.4f", g ? 1 - m / g : 0}') "
  R["$server memaslap kps"]+="$tps "
  R["$server memaslap rss"]+="$rss "
  R["$server memaslap srv"]+="$srv "
  csv_row "$server" memaslap "$2" "$(awk -v g="$gets" -v m="$misses" 'BEGIN {printf "%.4f", g ? 1 - m / g : 0}')" "$tps" "" "" \
    "$rss" "$srv"
}

median() { tr ' ' '\n' | sed '/^$/d' | sort -g | awk '{a[NR]=$1} END {print (NR ? a[int((NR+1)/2)] : "-")}'; }

for r in $(seq "$REPEAT"); do
  for wl in zipf uniform; do
    run_load memcached "$wl" "$r"
    run_load farmem-kv "$wl" "$r"
  done
  run_memaslap memcached "$r"
  run_memaslap farmem-kv "$r"
done

echo "memory M=${MEM} MiB, data ${RATIO}x: $KEYS values of $VSIZE B ($(( KEYS * VSIZE >> 20 )) MiB); medians of $REPEAT interleaved rounds"
echo "memcached -m $MEM -t 1; farmem-kv --local-mem ${MEM}M --capacity ${CAPACITY}M (store mode, shm memory server)"
printf '%-10s %-9s %9s %12s %9s %9s %10s %14s\n' server load hit_rate ops/s p50_us p99_us rss_MiB memserver_MiB
for wl in zipf uniform memaslap; do
  for s in memcached farmem-kv; do
    k="$s $wl"
    printf '%-10s %-9s %9s %12s %9s %9s %10s %14s\n' "$s" "$wl" "$(median <<<"${R["$k hit"]}")" \
      "$(median <<<"${R["$k kps"]}")" "$(median <<<"${R["$k p50"]:-}")" "$(median <<<"${R["$k p99"]:-}")" \
      "$(median <<<"${R["$k rss"]}")" "$(median <<<"${R["$k srv"]}")"
  done
done
