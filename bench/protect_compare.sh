#!/usr/bin/env bash
# What page protection (FARMEM_PROTECT=aead) and TLS (tcp+tls://) cost:
# farmem-bench (uniform by default) over tcp to a farmem-server on this machine
# (or over the embedded shm server), --mode sw and hw, each configuration in
# turn within a round so drift hits all alike; prints one line per run and the
# median ops/s of each, with its cost against the first. docs/benchmarks.md
# has the numbers.
#   bench/protect_compare.sh [ROUNDS] [WORKING_SET] [OPS] [WORKLOAD uniform|seq|zipf] [TRANSPORT tcp|shm|tls]
# TRANSPORT tcp or shm: protection off, then on. tls: plain tcp, tcp+tls, then
# tcp+tls with protection (a certificate is made with openssl).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3} WS=${2:-512M} OPS=${3:-200000} WORKLOAD=${4:-uniform} TRANSPORT=${5:-tcp}
case $TRANSPORT in
  tcp | shm) configs=("$TRANSPORT:none" "$TRANSPORT:aead") ;;
  tls) configs=(tcp:none tls:none tls:aead) ;;
  *) echo "protect_compare.sh: transport '$TRANSPORT' is not tcp, shm or tls" >&2; exit 2 ;;
esac
BENCH=build/bench/farmem-bench SERVER=build/apps/farmem-server/farmem-server
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$dir"' EXIT
# start SCHEME ARGS...: a farmem-server on a free port; sets port.
start() {
  local scheme=$1
  shift
  "$SERVER" --listen "$scheme://127.0.0.1:0" --capacity 8G "$@" >"$dir/$scheme.out" 2>&1 &
  for _ in $(seq 100); do
    port=$(sed -n "s|.*listening on $scheme://127.0.0.1:\([0-9]*\).*|\1|p" "$dir/$scheme.out")
    [[ -n $port ]] && return
    sleep 0.05
  done
  echo "farmem-server did not start: $(cat "$dir/$scheme.out")" >&2
  exit 1
}
start tcp
declare -A backend=([shm]=shm [tcp]=tcp://127.0.0.1:$port)
if [[ $TRANSPORT == tls ]]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=bench \
    -addext subjectAltName=IP:127.0.0.1 -keyout "$dir/key.pem" -out "$dir/cert.pem" 2>/dev/null
  start tcp+tls --tls-cert "$dir/cert.pem" --tls-key "$dir/key.pem"
  backend[tls]=tcp+tls://127.0.0.1:$port
  export FARMEM_TLS_CA=$dir/cert.pem
fi
echo "workload $WORKLOAD over $TRANSPORT, working set $WS, $OPS ops, $ROUNDS rounds"
declare -A runs
for r in $(seq "$ROUNDS"); do
  for mode in sw hw; do
    for c in "${configs[@]}"; do
      j=$(FARMEM_BACKEND=${backend[${c%:*}]} FARMEM_FAR_MEM=4G FARMEM_HW_MEM=1G FARMEM_PROTECT=${c#*:} \
          "$BENCH" --mode "$mode" --workload "$WORKLOAD" --working-set "$WS" --local-mem 25% --ops "$OPS" --json 2>/dev/null)
      ops=$(grep -o '"ops_per_sec":[0-9.]*' <<<"$j" | cut -d: -f2)
      p50=$(grep -o '"fault_p50_ns":[0-9]*' <<<"$j" | head -1 | cut -d: -f2)
      grep -q '"verified":true' <<<"$j" || { echo "round $r $mode $c: not verified: $j"; exit 1; }
      echo "round $r  mode $mode  ${c%:*} protect ${c#*:}  ops/s $ops  fault p50 ${p50} ns"
      runs[$mode-$c]+="$ops "
    done
  done
done
median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
for mode in sw hw; do
  base=$(median <<<"${runs[$mode-${configs[0]}]}")
  line="median $mode: ${configs[0]} $base ops/s"
  for c in "${configs[@]:1}"; do
    m=$(median <<<"${runs[$mode-$c]}")
    line+=", $c $m ops/s (cost $(awk -v a="$base" -v b="$m" 'BEGIN {printf "%.1f%%", (1 - b / a) * 100}'))"
  done
  echo "$line"
done
