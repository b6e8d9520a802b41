#!/usr/bin/env bash
# bench/latency_cdf.sh -- fault-latency CDFs per transport in one run: farmem-bench
# (far pointers) with the same working set and local memory over each transport
# (shm: the embedded server; tcp: a farmem-server this script starts on
# 127.0.0.1 and stops; file: an SSD-tier file in a scratch directory), each run
# appending its histogram to one CSV (farmem-bench --latency-csv), then
# bench/plot.py draws one CDF curve per transport. Needs no root.
# usage: bench/latency_cdf.sh [--csv FILE] [--png FILE] [--transports "shm tcp file"]
#          [--working-set SIZE] [--local-pct PCT] [--ops N] [--workload W] [--mode sw|hw] [--dir DIR]
#   --dir DIR: where the file transport's file goes (default: a scratch directory in /var/tmp)
set -euo pipefail
ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
BENCH=${FARMEM_BENCH:-$ROOT/build/bench/farmem-bench}
SERVER=${FARMEM_SERVER:-$ROOT/build/apps/farmem-server/farmem-server}
CSV=latency-cdf.csv PNG=latency-cdf.png TRANSPORTS="shm tcp file"
WS=1G PCT=25 OPS=2000000 WORKLOAD=uniform MODE=sw FILEDIR=/var/tmp
die() { echo "latency_cdf.sh: $*" >&2; exit 2; }
while [[ $# -gt 0 ]]; do
  [[ $1 == -h || $1 == --help ]] && { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0; }
  [[ $# -ge 2 ]] || die "$1 needs a value; see --help"
  case $1 in
    --csv) CSV=$2 ;;
    --png) PNG=$2 ;;
    --transports) TRANSPORTS=$2 ;;
    --working-set) WS=$2 ;;
    --local-pct) PCT=$2 ;;
    --ops) OPS=$2 ;;
    --workload) WORKLOAD=$2 ;;
    --mode) MODE=$2 ;;
    --dir) FILEDIR=$2 ;;
    *) die "unknown option $1; see --help" ;;
  esac
  shift 2
done
[[ $PCT =~ ^[0-9]+$ && $PCT -ge 1 && $PCT -le 100 ]] || die "--local-pct $PCT is not a percentage 1-100"
for t in $TRANSPORTS; do
  [[ $t == shm || $t == tcp || $t == file ]] || die "--transports: $t is not one of shm, tcp, file"
done
[[ -x $BENCH ]] || die "no $BENCH; build first (scripts/setup.sh) or set FARMEM_BENCH"
[[ " $TRANSPORTS " != *" tcp "* || -x $SERVER ]] || die "no $SERVER; build first (scripts/setup.sh) or set FARMEM_SERVER"
[[ " $TRANSPORTS " != *" file "* || -d $FILEDIR ]] || die "--dir $FILEDIR is not a directory"

scratch=$(mktemp -d)
server=""
cleanup() { [[ -n $server ]] && kill "$server" 2>/dev/null; rm -rf "$scratch"; }
trap cleanup EXIT
: >"$CSV"
for t in $TRANSPORTS; do
  case $t in
    shm) backend=shm ;;
    tcp)
      "$SERVER" --listen tcp://127.0.0.1:0 --capacity 64G >"$scratch/server.out" 2>&1 &
      server=$!
      port=""
      for _ in $(seq 100); do
        port=$(sed -n 's/.*listening on tcp:\/\/127.0.0.1:\([0-9]*\).*/\1/p' "$scratch/server.out")
        [[ -n $port ]] && break
        sleep 0.05
      done
      [[ -n $port ]] || die "farmem-server did not start: $(cat "$scratch/server.out")"
      backend=tcp://127.0.0.1:$port ;;
    file)
      fdir=$(mktemp -d "$FILEDIR/farmem-cdf.XXXXXX")
      backend=file://$fdir ;;
  esac
  echo "latency_cdf.sh: $t ($backend): $WORKLOAD, $MODE, working set $WS, local $PCT%, $OPS ops" >&2
  "$BENCH" --backend "$backend" --mode "$MODE" --workload "$WORKLOAD" --working-set "$WS" --local-mem "$PCT%" \
    --ops "$OPS" --latency-csv "$CSV" | sed -n 's/^ *faults/  faults/p' >&2
  if [[ $t == tcp ]]; then kill "$server"; wait "$server" 2>/dev/null || true; server=""; fi
  [[ $t == file ]] && rm -rf "$fdir"
done
/usr/bin/python3 "$ROOT/bench/plot.py" "$CSV" -o "$PNG" --title "farmem-bench $MODE, $WORKLOAD, $WS, $PCT% local"
