# Sourced by the end-to-end cli tests: a scratch directory ($tmp), background
# processes to kill at exit (append their pids to pids), and ok/bad lines with
# a failure count ($fails) for the script's exit status.
fails=0
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done; rm -rf "$tmp"; }
trap cleanup EXIT
ok() { echo "ok   $*"; }

# start_tcp_server NAME ARGS...: starts $SERVER (farmem-server) on a free tcp
# port with ARGS; sets PORT and SPID, output in $tmp/NAME.out and .err. With
# LISTEN_SCHEME=tcp+tls it listens on tcp+tls:// (ARGS name --tls-cert and --tls-key).
start_tcp_server() {
  local name=$1 scheme=${LISTEN_SCHEME:-tcp}
  shift
  : >"$tmp/$name.out"  # now: a reused name must not show the last server's port
  "$SERVER" --listen "$scheme://127.0.0.1:0" "$@" >"$tmp/$name.out" 2>"$tmp/$name.err" &
  SPID=$!
  pids+=("$SPID")
  for _ in $(seq 100); do
    PORT=$(sed -n "s|.*listening on $scheme://127.0.0.1:\([0-9]*\).*|\1|p" "$tmp/$name.out")
    [[ -n $PORT ]] && return 0
    sleep 0.05
  done
  echo "server did not start:"; cat "$tmp/$name.err"; exit 1
}
bad() { echo "FAIL $*"; fails=$((fails + 1)); }
