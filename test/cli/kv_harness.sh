# Sourced by the farmem-kv cli tests after harness.sh, with KV set to the
# farmem-kv binary. Environment given on the call (FARMEM_STATS=1 start_kv ...)
# reaches the server.
# start_kv NAME ARGS...: starts farmem-kv on a free port; sets port and kv_pid.
start_kv() {
  local name=$1
  shift
  : >"$tmp/$name.out"  # now, not when the background job gets to it
  "$KV" --listen 127.0.0.1:0 "$@" >"$tmp/$name.out" 2>"$tmp/$name.err" &
  kv_pid=$!
  pids+=("$kv_pid")
  port=""
  for _ in $(seq 100); do
    port=$(sed -n 's/^farmem-kv: listening on 127.0.0.1:\([0-9]*\) .*/\1/p' "$tmp/$name.out")
    [[ -n $port ]] && return 0
    sleep 0.1
  done
  bad "$name: farmem-kv did not start: $(cat "$tmp/$name.err")"
  return 1
}
