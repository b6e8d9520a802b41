#!/usr/bin/env bash
# Live statistics and metrics of running processes: farmem-stat reads a program
# using farmem (farmem-bench), a farmem-run program (python3) and a
# farmem-server while they run (counters move, --watch shows rates, --json
# names the FARMEM_STATS counters, the farmem-run program's counters match its
# exit statistics); FARMEM_METRICS serves the same counters as Prometheus text
# (404 elsewhere) for the runtime and the server; bad pids, bad addresses and
# ports in use get one line and a non-zero status. A farmem-run program over a
# pool of two tcp farmem-servers shows far bytes per server that add up to what
# it wrote, each equal to what that server granted its client session, and the
# server's metrics and farmem-stat show that session.
# Usage: stat_test.sh FARMEM_BENCH FARMEM_SERVER FARMEM_STAT [FARMEM_RUN HOLD]
set -uo pipefail
BENCH=$1 SERVER=$2 STAT=$3 RUN=${4:-} HOLD=${5:-}
PY=/usr/bin/python3
source "$(dirname "$0")/harness.sh"
export FARMEM_STATS_DIR=$tmp/stats  # only this test's processes

free_port() { $PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
field() { $PY -c 'import json,sys; print(json.loads(sys.stdin.readline())[sys.argv[1]])' "$1"; }  # KEY < json line
metric() { curl -s "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1 == m { print $2 }'; }  # PORT NAME
wait_for() {  # SECONDS COMMAND...: until the command succeeds
  local n=$(($1 * 10)); shift
  for _ in $(seq "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  return 1
}

# 1. A program using farmem: counters move, --json, --watch, metrics.
mport=$(free_port)
FARMEM_METRICS=127.0.0.1:$mport "$BENCH" --working-set 64M --local-mem 25% --ops 100000000 --no-verify \
  >"$tmp/bench.out" 2>&1 &
bench=$!
pids+=("$bench")
wait_for 20 test -f "$FARMEM_STATS_DIR/$bench" || bad "farmem-bench published no statistics"
sleep 1
j1=$("$STAT" --json "$bench")
sleep 1
j2=$("$STAT" --json "$bench")
f1=$(field faults <<<"$j1") f2=$(field faults <<<"$j2") e2=$(field evictions <<<"$j2")
if ((f2 > f1 && e2 > 0)); then ok "farmem-stat --json: faults move ($f1 -> $f2), evictions $e2"; else bad "counters do not move: $j1 / $j2"; fi
[[ $(wc -l <<<"$j2") == 1 ]] && ok "--json prints one object" || bad "--json printed: $j2"
for k in faults zero_fills fetches evictions writebacks resident_bytes local_mem_bytes far_bytes fault_p99_ns; do
  field "$k" <<<"$j2" >/dev/null 2>&1 || bad "--json lacks $k"
done
grep -q '"settings":{"backend":"shm"' <<<"$j2" && ok "--json names the settings" || bad "no settings: $j2"
"$STAT" "$bench" >"$tmp/one.txt"
grep -q 'resident .* of .* budget' "$tmp/one.txt" && grep -q 'fault latency: p50' "$tmp/one.txt" &&
  ok "farmem-stat PID shows resident/budget and the latency histogram" || bad "farmem-stat PID: $(cat "$tmp/one.txt")"
"$STAT" --watch 0.5 --count 2 "$bench" >"$tmp/watch.txt"
rate=$(awk -v p="$bench" '$1 == p { r = $3 } END { print r + 0 }' "$tmp/watch.txt")
[[ $(grep -c "^ *$bench " "$tmp/watch.txt") == 2 ]] && ((rate > 0)) && ok "--watch: a line per interval, $rate faults/s" ||
  bad "--watch: $(cat "$tmp/watch.txt")"
"$STAT" | grep -q "^pid $bench (farmem-bench)" && ok "farmem-stat without a pid lists the process" || bad "not listed"
m=$(metric "$mport" farmem_faults_total)
((m >= f2)) && ok "metrics: farmem_faults_total $m" || bad "metrics farmem_faults_total '$m' (farmem-stat had $f2)"
curl -s "http://127.0.0.1:$mport/metrics" | grep -q '^farmem_fault_latency_seconds_bucket{le="+Inf"}' &&
  ok "metrics: the fault-latency histogram" || bad "no histogram in the metrics"
code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$mport/other")
[[ $code == 404 ]] && ok "metrics: 404 elsewhere" || bad "GET /other gave $code"

# 2. Bad input: one line, non-zero status.
err=$(FARMEM_METRICS=127.0.0.1:$mport "$BENCH" --ops 10 2>&1); rc=$?
((rc != 0)) && [[ $(wc -l <<<"$err") == 1 && $err == *"in use"* ]] && ok "port in use: $err" || bad "port in use: rc $rc: $err"
err=$(FARMEM_METRICS=localhost "$BENCH" --ops 10 2>&1); rc=$?
((rc != 0)) && [[ $err == *"is not HOST:PORT"* ]] && ok "bad FARMEM_METRICS: $err" || bad "bad address: rc $rc: $err"
kill "$bench"
wait "$bench" 2>/dev/null
err=$("$STAT" "$bench" 2>&1); rc=$?
((rc == 1)) && [[ $err == "farmem-stat: no process $bench" ]] && ok "a gone process: $err" || bad "gone: rc $rc: $err"
[[ ! -e $FARMEM_STATS_DIR/$bench ]] && ok "its stale file was removed" || bad "stale file kept"
err=$("$STAT" $$ 2>&1); rc=$?
((rc == 1)) && [[ $err == *"publishes no farmem statistics"* ]] && ok "not a farmem process: rc 1" || bad "bash: rc $rc: $err"
err=$("$STAT" 12ab 2>&1); rc=$?
((rc == 2)) && [[ $(wc -l <<<"$err") == 1 ]] && ok "bad pid: $err" || bad "bad pid: rc $rc: $err"

# 3. farmem-server, and a client using it: clients and granted bytes, live and as metrics.
sport=$(free_port)
FARMEM_METRICS=127.0.0.1:$sport "$SERVER" --listen tcp://127.0.0.1:0 --capacity 256M >"$tmp/server.out" 2>&1 &
server=$!
pids+=("$server")
wait_for 10 grep -q listening "$tmp/server.out" || bad "server did not start"
port=$(sed -n 's/.*tcp:\/\/127.0.0.1:\([0-9]*\).*/\1/p' "$tmp/server.out" | head -1)
FARMEM_BACKEND=tcp://127.0.0.1:$port "$BENCH" --working-set 64M --local-mem 25% --ops 100000000 --no-verify \
  >/dev/null 2>&1 &
client=$!
pids+=("$client")
granted() { (($("$STAT" --json "$server" | field granted_bytes) > 0)); }
if wait_for 20 granted; then
  js=$("$STAT" --json "$server")
  [[ $(field kind <<<"$js") == server && $(field clients <<<"$js") == 1 ]] &&
    ok "farmem-stat reads farmem-server: 1 client, $(field granted_bytes <<<"$js") bytes granted" || bad "server: $js"
else
  bad "the server's granted bytes never grew"
fi
[[ $(metric "$sport" farmem_server_clients) == 1 ]] && ok "server metrics: farmem_server_clients 1" ||
  bad "server metrics: $(curl -s "http://127.0.0.1:$sport/metrics")"
"$STAT" --json "$client" | grep -q "\"transport\":\"tcp://127.0.0.1:$port\"" && ok "the client names its transport" ||
  bad "client transport: $("$STAT" --json "$client")"
"$STAT" --json "$client" | $PY -c 'import json,sys; r=json.load(sys.stdin)["servers"]; sys.exit(not (len(r) == 1 and r[0]["server"] == sys.argv[1] and r[0]["written_bytes"] > 0))' "tcp://127.0.0.1:$port" &&
  ok "one server is one row of far bytes per server" || bad "one server's row: $("$STAT" --json "$client")"
kill "$client" "$server"
wait "$client" "$server" 2>/dev/null

# 4. A farmem-run program: its live counters, once it is idle, are its exit statistics.
if [[ -n $RUN && -n $HOLD ]]; then
  mkfifo "$tmp/in"
  "$RUN" --local-mem 16M --stats -- "$HOLD" 48 <"$tmp/in" >"$tmp/run.out" 2>"$tmp/run.err" &
  prog=$!
  pids+=("$prog")
  exec 7>"$tmp/in"
  wait_for 60 grep -q ready "$tmp/run.out" || bad "the farmem-run program did not start"
  prev="" live=""
  for _ in $(seq 50); do  # until two reads 0.3 s apart agree
    live=$("$STAT" --json "$prog" | $PY -c 'import json,sys; d=json.load(sys.stdin); print(d["faults"], d["evictions"], d["hw_quick_refaults"], d["evictor_cpu_ms"])')
    [[ -n $live && $live == "$prev" ]] && break
    prev=$live
    sleep 0.3
  done
  exec 7>&-
  wait "$prog"
  atexit=$(grep farmem_stats "$tmp/run.err" | $PY -c 'import json,sys; d=json.load(sys.stdin); print(d["faults"], d["evictions"], d["hw_quick_refaults"], d["runtime_threads"]["evictor"]["cpu_ms"])')
  read -r lf le lq lc <<<"$live"
  read -r xf xe xq xc <<<"$atexit"
  if [[ -n $lf && $lf == "$xf" && $le == "$xe" && $lq == "$xq" ]] && ((le > 0)); then
    ok "farmem-run program: live faults/evictions/quick refaults $lf/$le/$lq, at exit $xf/$xe/$xq"
  else
    bad "farmem-run program: live '$live', at exit '$atexit' ($(cat "$tmp/run.err"))"
  fi
  # The evictor's CPU time, live and at exit (ms; it ran: 32 MiB went far).
  if [[ -n $lc && -n $xc ]] && ((lc > 0 && lc <= xc)); then
    ok "farmem-run program: evictor CPU $lc ms live, $xc ms at exit"
  else
    bad "farmem-run program: live '$live', at exit '$atexit' ($(cat "$tmp/run.err"))"
  fi
  [[ ! -e $FARMEM_STATS_DIR/$prog ]] && ok "the program removed its statistics file at exit" || bad "$prog file left"
  "$STAT" >/dev/null  # removes the files of the processes killed above
  [[ -z $(ls -A "$FARMEM_STATS_DIR") ]] && ok "no statistics file left behind" || bad "left: $(ls -A "$FARMEM_STATS_DIR")"
fi

# 5. Far bytes per server: a farmem-run program over a pool of two farmem-servers.
if [[ -n $RUN && -n $HOLD ]]; then
  sport=$(free_port)
  start_tcp_server pool1 --capacity 256M
  p1=$PORT s1=$SPID
  FARMEM_METRICS=127.0.0.1:$sport start_tcp_server pool2 --capacity 256M
  p2=$PORT s2=$SPID
  mkfifo "$tmp/in2"
  FARMEM_BACKEND=tcp://127.0.0.1:$p1,tcp://127.0.0.1:$p2 "$RUN" --local-mem 8M -- "$HOLD" 32 <"$tmp/in2" \
    >"$tmp/pool.out" 2>"$tmp/pool.err" &
  prog=$!
  pids+=("$prog")
  exec 7>"$tmp/in2"
  wait_for 60 grep -q ready "$tmp/pool.out" || bad "the farmem-run program over the pool did not start"
  # Once the program is idle: per server [far, written], the client's bytes_out, each server's grant to it.
  check_pool() {
    "$STAT" --json "$prog" >"$tmp/client.json" && "$STAT" --json "$s1" >"$tmp/s1.json" &&
      "$STAT" --json "$s2" >"$tmp/s2.json" && $PY - "$tmp" "$p1" "$p2" <<'PYEOF'
import json, sys
d, p1, p2 = sys.argv[1], sys.argv[2], sys.argv[3]
c = json.load(open(d + "/client.json"))
rows = {r["server"]: r for r in c.get("servers", [])}
a, b = rows.get("tcp://127.0.0.1:" + p1), rows.get("tcp://127.0.0.1:" + p2)
if not a or not b:
    sys.exit("no per-server rows: %s" % c.get("servers"))
grants = []
for f in ("s1.json", "s2.json"):
    s = json.load(open(d + "/" + f))
    sess = s.get("client_sessions", [])
    if len(sess) != 1 or not sess[0]["client"].startswith("127.0.0.1:"):
        sys.exit("server %s: client sessions %s" % (f, sess))
    grants.append(sess[0]["granted_bytes"])
written = a["written_bytes"] + b["written_bytes"]
problems = []
if a["far_bytes"] == 0 or b["far_bytes"] == 0: problems.append("a server holds nothing")
if written != c["bytes_out"]: problems.append("written %d != bytes_out %d" % (written, c["bytes_out"]))
if a["far_bytes"] + b["far_bytes"] < c["far_bytes"]: problems.append("far per server < far_bytes %d" % c["far_bytes"])
if [a["far_bytes"], b["far_bytes"]] != grants: problems.append("far %s != granted %s" % ([a["far_bytes"], b["far_bytes"]], grants))
if problems: sys.exit("; ".join(problems))
print("far %d + %d bytes (granted %d, %d), written %d + %d = bytes_out %d" % (
    a["far_bytes"], b["far_bytes"], grants[0], grants[1], a["written_bytes"], b["written_bytes"], c["bytes_out"]))
PYEOF
  }
  if wait_for 10 check_pool; then
    ok "pool of two servers: $(check_pool)"
  else
    bad "pool of two servers: $(check_pool 2>&1)"
  fi
  "$STAT" "$prog" | grep -q "far bytes per server" && "$STAT" "$s2" | grep -Eq "session [0-9]+ +127.0.0.1:[0-9]+ +granted" &&
    ok "farmem-stat text shows far bytes per server and the server's client session" ||
    bad "farmem-stat text: $("$STAT" "$prog" "$s2")"
  read -r sess sgrant < <($PY -c 'import json,sys; r=json.load(open(sys.argv[1]))["client_sessions"][0]; print(r["session"], r["granted_bytes"])' "$tmp/s2.json")
  mfar=$(curl -s "http://127.0.0.1:$sport/metrics" | sed -n "s/^farmem_server_client_granted_bytes{session=\"$sess\",client=\"127.0.0.1:[0-9]*\"} //p")
  [[ -n $mfar && $mfar == "$sgrant" ]] &&
    ok "server metrics: farmem_server_client_granted_bytes{session=\"$sess\",client=...} $mfar" ||
    bad "server metrics per client: '$mfar' $(curl -s "http://127.0.0.1:$sport/metrics" | grep client_)"
  exec 7>&-
  wait "$prog"
  kill "$s1" "$s2"
  wait "$s1" "$s2" 2>/dev/null
fi

exit $((fails > 0))
