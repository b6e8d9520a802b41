#!/usr/bin/env bash
# End to end over redis:// with real redis-server processes this script starts
# (and stops): a far array at a quarter of its size in local memory is exact
# through Redis, SELECT puts it in another database, no farmem key remains
# after the program exits and other keys are untouched, AUTH with a password
# and with an ACL user (URI and FARMEM_REDIS_AUTH_FILE), WAIT for a replica, a
# killed client's keys removed by its reaper, the documented clean-up command, an unmodified
# program under farmem-run with identical output, two Redis in a replicated
# pool that loses one mid-run, and one line with a non-zero
# exit for each problem: no server, wrong or missing password, a full Redis,
# a server that is not Redis, a Redis that dies mid-run, a bad URI, a cluster URI at a standalone Redis;
# connections dropped and a failover behind the same address (reconnected),
# and a Redis restarted without a replica copy (one line).
# Usage: redis_test.sh FARMEM_BENCH [FARMEM_RUN]
set -uo pipefail
BENCH=$1
RUN=${2:-}
source "$(dirname "${BASH_SOURCE[0]}")/harness.sh"
source "$(dirname "${BASH_SOURCE[0]}")/redis_harness.sh"

start_redis main --repl-diskless-sync-delay 0  # a replica syncs at once, not after 5 s
MAIN=$RPORT
rcli "$MAIN" set keep "me" >/dev/null
rcli "$MAIN" -n 2 hset keep2 field value >/dev/null

# 1. A 64 MiB far array at 25% local through Redis, in database 2 (SELECT).
out=$(FARMEM_STATS=1 bench "redis://127.0.0.1:$MAIN/2" 64M --ops 20000)
stats=$(grep farmem_stats "$tmp/err")
if grep -q '"verified":true' <<<"$out" && grep -q '"evictions":[1-9]' <<<"$out" &&
  grep -q '"redis":{"reads":[1-9]' <<<"$stats"; then
  ok "64 MiB far array at 25% local through redis:// database 2 verified ($(grep -o '"redis":{[^}]*}' <<<"$stats"))"
else bad "far array through redis: $out $(tail -2 "$tmp/err")"; fi
if [[ $(farmem_keys "$MAIN" -n 2) == 0 && $(farmem_keys "$MAIN") == 0 && $(rcli "$MAIN" get keep) == me &&
  $(rcli "$MAIN" -n 2 hget keep2 field) == value && $(rcli "$MAIN" -n 2 dbsize) == 1 ]]; then
  ok "after exit no farmem key remains; other keys in databases 0 and 2 untouched"
else bad "keys after exit: $(farmem_keys "$MAIN" -n 2) in db 2, $(farmem_keys "$MAIN") in db 0, keep=$(rcli "$MAIN" get keep)"; fi

# 2. AUTH: a password in the URI, an ACL user in FARMEM_REDIS_AUTH_FILE.
start_redis auth --requirepass pw
AUTH=$RPORT
rcli "$AUTH" -a pw acl setuser alice on '>apw' '~farmem:*' '+@all' >/dev/null
out=$(bench "redis://:pw@127.0.0.1:$AUTH" 32M --ops 3000)
grep -q '"verified":true' <<<"$out" && ok "AUTH with the URI's password" || bad "URI password: $(tail -1 "$tmp/err")"
echo "alice apw" >"$tmp/authfile"
out=$(FARMEM_REDIS_AUTH_FILE=$tmp/authfile bench "redis://127.0.0.1:$AUTH" 32M --ops 3000)
grep -q '"verified":true' <<<"$out" && ok "AUTH as ACL user alice from FARMEM_REDIS_AUTH_FILE" ||
  bad "auth file: $(tail -1 "$tmp/err")"

# 3. WAIT: with a replica attached, writes complete once it holds them.
start_redis replica --replicaof 127.0.0.1 "$MAIN"
for _ in $(seq 100); do rcli "$MAIN" info replication | grep -q 'slave0:.*state=online' && break; sleep 0.1; done
out=$(FARMEM_STATS=1 bench "redis://127.0.0.1:$MAIN" 16M --local-mem 8M --ops 1000)
if grep -q '"verified":true' <<<"$out" && grep -q '"waits":[1-9][0-9]*,"wait_replicas":1' "$tmp/err"; then
  ok "a replica: writes wait for it by default (WAIT 1)"
else bad "WAIT: $out $(tail -1 "$tmp/err")"; fi
FARMEM_REDIS_WAIT=2 bench "redis://127.0.0.1:$MAIN" 32M --ops 1000 >/dev/null; rc=$?
((rc != 0)) && grep -q 'FARMEM_REDIS_WAIT=2 but .* has 1 connected replicas' "$tmp/err" &&
  ok "FARMEM_REDIS_WAIT above the replicas refused: $(tail -1 "$tmp/err")" || bad "WAIT=2: rc $rc $(tail -1 "$tmp/err")"
kill "$RPID"; wait "$RPID" 2>/dev/null
for _ in $(seq 100); do rcli "$MAIN" info replication | grep -q 'connected_slaves:0' && break; sleep 0.1; done

# 4. A client killed with SIGKILL: its reaper removes its keys. The command
#    docs/redis.md gives for keys left by a client whose reaper died too
#    removes that client's keys and nothing else.
FARMEM_BACKEND=redis://127.0.0.1:$MAIN FARMEM_REDIS_WAIT=0 FARMEM_FAR_MEM=256M "$BENCH" --working-set 64M --local-mem 25% --ops 100000000 \
  --json >/dev/null 2>&1 &
victim=$!
for _ in $(seq 300); do (($(farmem_keys "$MAIN") > 100)) && break; sleep 0.1; done
left=$(farmem_keys "$MAIN")
kill -9 "$victim"; wait "$victim" 2>/dev/null
if ((left > 0)) && no_keys_within 5 "$MAIN" && [[ $(rcli "$MAIN" get keep) == me ]]; then
  ok "a client killed with SIGKILL: its reaper removed its $left keys"
else bad "killed client: $left keys, $(farmem_keys "$MAIN") after 5 s"; fi
for k in "farmem:{$(hostname)-999999-1-0}:0" "farmem:{$(hostname)-999999-1-0}:1" "farmem:{$(hostname)-888888-1-0}:0"; do
  rcli "$MAIN" set "$k" x >/dev/null
done
rcli "$MAIN" --scan --pattern "farmem:{$(hostname)-999999-*" | xargs -r redis-cli -p "$MAIN" unlink >/dev/null
if [[ $(farmem_keys "$MAIN") == 1 && $(rcli "$MAIN" exists "farmem:{$(hostname)-888888-1-0}:0") == 1 ]]; then
  ok "the documented scan | unlink removes one client's keys and no other's"
else bad "documented clean-up left $(farmem_keys "$MAIN") keys"; fi
rcli "$MAIN" del "farmem:{$(hostname)-888888-1-0}:0" >/dev/null

# 5. An unmodified program under farmem-run: output identical to a plain run.
if [[ -n $RUN ]]; then
  run_python "redis://127.0.0.1:$MAIN"; rc=$?
  # farmem-run leaves far memory in place at exit (libc may still read it): the reaper removes the keys.
  if ((rc == 0)) && cmp -s "$tmp/plain.out" "$tmp/run.out" && grep -q '"redis":{"reads":[0-9]*,"writes":[1-9]' "$tmp/run.err" &&
    no_keys_within 5 "$MAIN"; then
    ok "python3 under farmem-run over redis://: identical output, pages went to Redis, no key left after it"
  else bad "farmem-run: rc $rc $(cat "$tmp/run.out") $(tail -2 "$tmp/run.err")"; fi
fi

# 6. Two Redis in a pool with replicas:2: one is killed mid-run, nothing is lost.
start_redis pool1
P1=$RPORT
start_redis pool2
P2=$RPORT
P2PID=$RPID
FARMEM_STATS=1 FARMEM_REDUNDANCY=replicas:2 FARMEM_BACKEND=redis://127.0.0.1:$P1,redis://127.0.0.1:$P2 \
  FARMEM_FAR_MEM=256M timeout 120 "$BENCH" --working-set 32M --local-mem 25% --ops 20000 --json >"$tmp/pool.out" 2>"$tmp/pool.err" &
client=$!
for _ in $(seq 300); do (($(farmem_keys "$P2") > 1000)) && break; sleep 0.1; done
kill -9 "$P2PID"
wait "$client"; rc=$?
if ((rc == 0)) && grep -q '"verified":true' "$tmp/pool.out" && grep -q "redis://127.0.0.1:$P2 is down" "$tmp/pool.err" &&
  no_keys_within 5 "$P1"; then
  ok "a pool of two Redis (replicas:2), one killed mid-run: verified, its keys removed from the other"
else bad "redis pool: rc $rc $(cat "$tmp/pool.out") $(grep -v measured "$tmp/pool.err" | tail -3)"; fi

# 7. Connections made again. Redis drops every client connection mid-run
#    (CLIENT KILL): the run goes on with the same Redis. Then a failover
#    behind the same address: the master is killed, its replica promoted
#    (with a replica of its own, so WAIT 1 still holds) and a forwarder takes
#    over the old address; with FARMEM_REDIS_WAIT=1 nothing acknowledged is
#    lost. Without WAIT, a Redis restarted at that address ends the run with
#    one line (its pages may be gone or old), never with wrong data.
start_redis drops
DROPS=$RPORT
bench "redis://127.0.0.1:$DROPS" 32M --ops 60000 >"$tmp/drops.out" &
client=$!
for _ in $(seq 300); do (($(farmem_keys "$DROPS") > 1000)) && break; sleep 0.05; done
rcli "$DROPS" client kill type normal >/dev/null
wait "$client"; rc=$?
if ((rc == 0)) && grep -q '"verified":true' "$tmp/drops.out"; then
  ok "every client connection dropped mid-run: reconnected to the same Redis, verified"
else bad "connections dropped: rc $rc $(cat "$tmp/drops.out") $(tail -3 "$tmp/err")"; fi

forward() {  # FROM TO: a TCP forwarder on port FROM to port TO (the failover's new address owner)
  python3 -c '
import socket, sys, threading
def pump(a, b):
    try:
        while (d := a.recv(65536)):
            b.sendall(d)
    except OSError:
        pass
    for s in (a, b):
        try: s.shutdown(socket.SHUT_RDWR)
        except OSError: pass
ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("127.0.0.1", int(sys.argv[1]))); ls.listen(64)
while True:
    c, _ = ls.accept(); u = socket.create_connection(("127.0.0.1", int(sys.argv[2])))
    for a, b in ((c, u), (u, c)): threading.Thread(target=pump, args=(a, b), daemon=True).start()' "$1" "$2" &
  pids+=($!)
}
start_redis fo-master --repl-diskless-sync-delay 0
FOM=$RPORT FOMPID=$RPID
start_redis fo-replica --replicaof 127.0.0.1 "$FOM" --repl-diskless-sync-delay 0
FOR=$RPORT
start_redis fo-replica2 --replicaof 127.0.0.1 "$FOR"
for _ in $(seq 100); do rcli "$FOM" info replication | grep -q 'connected_slaves:1' && break; sleep 0.1; done
FARMEM_STATS=1 FARMEM_REDIS_WAIT=1 FARMEM_SERVER_TIMEOUT=20s bench "redis://127.0.0.1:$FOM" 32M --ops 30000 >"$tmp/fo.out" &
client=$!
for _ in $(seq 300); do (($(farmem_keys "$FOR") > 1000)) && break; sleep 0.05; done
kill -9 "$FOMPID"
rcli "$FOR" replicaof no one >/dev/null
forward "$FOM" "$FOR"
wait "$client"; rc=$?
if ((rc == 0)) && grep -q '"verified":true' "$tmp/fo.out" && grep -q '"reconnects":[1-9]' "$tmp/err"; then
  ok "failover behind the same address (master killed, replica promoted, WAIT 1): verified ($(grep -o '"redis":{[^}]*}' "$tmp/err"))"
else bad "failover: rc $rc $(cat "$tmp/fo.out") $(grep -v measured "$tmp/err" | tail -3)"; fi

start_redis restarted
RST=$RPORT
( for _ in $(seq 300); do (($(farmem_keys "$RST") > 1000)) && break; sleep 0.05; done
  kill -9 "$RPID"; sleep 0.3
  redis-server --port "$RST" --bind 127.0.0.1 --save '' --appendonly no >/dev/null 2>&1 & echo $! >"$tmp/rst.pid" ) &
t0=$SECONDS
FARMEM_REDIS_WAIT=0 bench "redis://127.0.0.1:$RST" 32M --ops 100000000 >/dev/null; rc=$?
pids+=("$(cat "$tmp/rst.pid" 2>/dev/null)")
line=$(grep '^farmem' "$tmp/err")
if ((rc != 0 && SECONDS - t0 < 60)) && [[ $(wc -l <<<"$line") -eq 1 ]] &&
  grep -q "is another Redis now (restarted, or failed over: run_id .*FARMEM_REDIS_WAIT=0 kept no replica copy" <<<"$line"; then
  ok "Redis restarted at its address without a replica copy: stopped with one line: $line"
else bad "restarted Redis: rc $rc, '$line'"; fi

# 8. Problems: one line, non-zero exit, within seconds.
expect_line() {  # WHAT PATTERN URI [ENV...]: runs a short bench, wants one farmem line matching PATTERN
  local what=$1 pattern=$2 uri=$3
  shift 3
  local t0=$SECONDS
  env "$@" FARMEM_BACKEND="$uri" FARMEM_FAR_MEM=256M timeout 60 "$BENCH" --working-set 32M --local-mem 25% \
    --ops "${OPS:-20000}" --json >/dev/null 2>"$tmp/e"; local rc=$?
  local lines
  lines=$(grep -c '^farmem' "$tmp/e")
  if ((rc != 0 && rc != 124 && lines == 1 && SECONDS - t0 < 15)) && grep -q -- "$pattern" "$tmp/e"; then
    ok "$what: $(grep '^farmem' "$tmp/e")"
  else bad "$what: rc $rc, $(cat "$tmp/e")"; fi
}
NOBODY=$(free_port)
expect_line "no server" "cannot connect to Redis at redis://127.0.0.1:$NOBODY: Connection refused" "redis://127.0.0.1:$NOBODY"
expect_line "wrong password" "refused our credentials (WRONGPASS" "redis://:nope@127.0.0.1:$AUTH"
expect_line "no password" "needs a password (NOAUTH" "redis://127.0.0.1:$AUTH"
expect_line "bad URI" "port must be 1-65535" "redis://127.0.0.1:99999"
expect_line "no such database" "refused database 99" "redis://127.0.0.1:$MAIN/99"
expect_line "cluster URI at a standalone Redis" "is not a cluster node (ERR This instance has cluster support disabled)" "redis+cluster://127.0.0.1:$MAIN,127.0.0.1:$AUTH"
NOTREDIS=$(free_port)
python3 -c '
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(8)
while True:
    c, _ = s.accept(); c.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")' "$NOTREDIS" &
pids+=($!)
for _ in $(seq 100); do python3 -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])))' \
  "$NOTREDIS" 2>/dev/null && break; sleep 0.1; done
expect_line "not a Redis server" "does not speak the Redis protocol" "redis://127.0.0.1:$NOTREDIS"
rcli "$AUTH" -a pw config set maxmemory 8mb >/dev/null
expect_line "a full Redis" "far memory is full: Redis at redis://\*\*\*@127.0.0.1:$AUTH refused a page: OOM" \
  "redis://:pw@127.0.0.1:$AUTH"
[[ $(rcli "$AUTH" -a pw dbsize) == 0 ]] && ok "the full run removed its keys before exiting" ||
  bad "a full Redis kept $(rcli "$AUTH" -a pw dbsize) keys"
start_redis doomed
DOOMED=$RPORT
# Killed once pages are going to it; the run is long enough (OPS) to be still going then.
( for _ in $(seq 300); do (($(farmem_keys "$DOOMED") > 1000)) && break; sleep 0.05; done; kill -9 "$RPID" ) &
OPS=100000000 expect_line "Redis killed mid-run" "lost Redis at redis://127.0.0.1:$DOOMED .*far memory is gone" \
  "redis://127.0.0.1:$DOOMED" FARMEM_SERVER_TIMEOUT=3s

exit $((fails > 0))
