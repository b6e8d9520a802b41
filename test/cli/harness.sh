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

# expect_error NAME PATTERN CMD...: CMD ends within 20 s with a non-zero status
# and one line on stderr that matches PATTERN (grep).
expect_error() {
  local name=$1 pattern=$2
  shift 2
  local err rc
  err=$(timeout 20 "$@" 2>&1 >/dev/null); rc=$?
  if ((rc != 0 && rc != 124)) && [[ $(wc -l <<<"$err") -eq 1 ]] && grep -q -- "$pattern" <<<"$err"; then ok "$name: $err"
  else bad "$name (exit $rc): $err"; fi
}
