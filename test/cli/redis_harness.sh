# Sourced by the redis end-to-end tests (after harness.sh): real redis-server
# processes on free loopback ports, farmem-bench through them, and key counts.
# Needs BENCH (farmem-bench); skips the test without redis-server.
command -v redis-server >/dev/null && command -v redis-cli >/dev/null || {
  echo "redis-server and redis-cli are not installed (apt-get install redis-server): skipped"; exit 77; }

ok() { echo "ok   [${SECONDS}s] $*"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# start_redis NAME ARGS...: a redis-server on a free port, no persistence; sets RPORT and RPID.
start_redis() {
  local name=$1
  shift
  RPORT=$(free_port)
  redis-server --port "$RPORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$tmp" \
    --dbfilename "$name.rdb" "$@" >"$tmp/$name.log" 2>&1 &
  RPID=$!
  pids+=("$RPID")
  for _ in $(seq 100); do
    redis-cli -p "$RPORT" ping 2>/dev/null | grep -q -e PONG -e NOAUTH && return 0
    sleep 0.05
  done
  echo "redis-server did not start:"; cat "$tmp/$name.log"; exit 1
}
rcli() { redis-cli --no-auth-warning -p "$@"; }
bench() {  # URI WORKING_SET ARGS...: farmem-bench at 25% local; JSON on stdout, stderr in $tmp/err
  local uri=$1 ws=$2
  shift 2
  FARMEM_BACKEND=$uri FARMEM_FAR_MEM=256M timeout 120 "$BENCH" --working-set "$ws" --local-mem 25% \
    --uthreads 16 --json "$@" 2>"$tmp/err"
}
farmem_keys() { rcli "$@" --scan --pattern 'farmem:*' | wc -l; }
no_keys_within() {  # SECONDS REDIS-CLI-ARGS...
  local t=$1
  shift
  for _ in $(seq $((t * 10))); do [[ $(farmem_keys "$@") == 0 ]] && return 0; sleep 0.1; done
  return 1
}
# run_python URI: a python3 program holding 32 MiB, plain and under farmem-run
# (RUN) at 12 MiB local over URI; outputs in $tmp/plain.out and $tmp/run.out,
# farmem-run's stderr in $tmp/run.err; its status.
run_python() {
  cat >"$tmp/prog.py" <<'PY'
import hashlib
blocks = [bytes([i % 251]) * (1 << 20) for i in range(32)]
h = hashlib.sha256()
for b in blocks: h.update(b)
print(h.hexdigest(), sum(len(b) for b in blocks))
PY
  python3 "$tmp/prog.py" >"$tmp/plain.out"
  "$RUN" --local-mem 12M --backend "$1" --stats -- python3 "$tmp/prog.py" >"$tmp/run.out" 2>"$tmp/run.err"
}
