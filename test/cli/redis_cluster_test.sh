#!/usr/bin/env bash
# End to end over redis+cluster:// with a real Redis Cluster this script starts
# on loopback: 3 masters with a replica each. A far array at a quarter of its
# size in local memory is exact through the cluster, its pages spread over the
# three masters and no key is left after exit; redis-cli --cluster reshard
# moves slots (keys and all) to a master added during a run, and a master is killed mid-run and
# its replica promoted, both without a lost or wrong page; a client killed
# with SIGKILL after slots moved has its keys removed from every master by its
# reaper; an
# unmodified program under farmem-run gives identical output; the cluster is
# one member of a pool; one line each
# for a redis:// URI at a cluster node and a WAIT above the replicas.
# Usage: redis_cluster_test.sh FARMEM_BENCH [FARMEM_RUN]
set -uo pipefail
BENCH=$1
RUN=${2:-}
source "$(dirname "${BASH_SOURCE[0]}")/harness.sh"
source "$(dirname "${BASH_SOURCE[0]}")/redis_harness.sh"

# Six nodes; the cluster bus on a port of its own (not PORT+10000, which may be taken).
declare -a PORTS NODE_PIDS
for i in 1 2 3 4 5 6; do
  start_redis "node$i" --cluster-enabled yes --cluster-config-file "nodes-$i.conf" --cluster-node-timeout 1000 \
    --cluster-port "$(free_port)" --repl-diskless-sync-delay 0
  PORTS+=("$RPORT")
  NODE_PIDS+=("$RPID")
done
addrs=()
for p in "${PORTS[@]}"; do addrs+=("127.0.0.1:$p"); done
redis-cli --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes >"$tmp/create.log" 2>&1 ||
  { echo "redis-cli --cluster create failed:"; cat "$tmp/create.log"; exit 1; }
# masters: "PORT ID" of each master, from any live node's view.
masters() { rcli "${1:-${PORTS[0]}}" cluster nodes | awk '/master/ && !/fail/ {split($2, a, "[:@]"); print a[2], $1}'; }
cluster_ready() {  # every node says ok and lists the 3 replicas; each master's replica is online (WAIT 1 holds)
  local p
  for p in "$@"; do
    rcli "$p" cluster info | grep -q cluster_state:ok || return 1
    # CLUSTER SLOTS lists a replica once it has synced: 3 masters and 3 replicas, by node id.
    (($(rcli "$p" cluster slots | grep -cE '^[0-9a-f]{40}$') == 6)) || return 1
  done
  while read -r port _; do
    rcli "$port" info replication | grep -q 'slave0:.*state=online' || return 1
  done < <(masters "$1")
}
for _ in $(seq 200); do cluster_ready "${PORTS[@]}" && break; sleep 0.1; done
cluster_ready "${PORTS[@]}" || { echo "the cluster did not come up:"; rcli "${PORTS[0]}" cluster nodes; exit 1; }
URI="redis+cluster://127.0.0.1:${PORTS[0]},127.0.0.1:${PORTS[1]}"
cluster_keys() {  # farmem keys over every live master
  local n=0 port
  while read -r port _; do n=$((n + $(farmem_keys "$port"))); done < <(masters)
  echo "$n"
}
# reshard FROM_ID TO_ID SLOTS LOG: redis-cli --cluster reshard; asked again
# (up to 5 times, 1 s apart) while its check before moving anything finds the
# cluster still settling ("Please fix your cluster problems").
reshard() {
  local try
  for try in 1 2 3 4 5; do
    redis-cli --cluster reshard "127.0.0.1:${PORTS[0]}" --cluster-from "$1" --cluster-to "$2" --cluster-slots "$3" \
      --cluster-yes --cluster-pipeline 64 >>"$4" 2>&1 && return 0
    grep -q "Please fix your cluster problems\|CLUSTERDOWN" "$4" || return 1
    # A loaded machine can miss heartbeats for the 1 s node timeout: a node then
    # answers CLUSTERDOWN for a moment and leaves a slot half moved. Close the
    # open slots (--cluster fix) once the cluster is up again, and go on.
    sleep 1
    redis-cli --cluster fix "127.0.0.1:${PORTS[0]}" --cluster-yes >>"$4" 2>&1 || true
  done
  return 1
}
set_calls() { rcli "$1" info commandstats | sed -n 's/^cmdstat_set:calls=\([0-9]*\).*/\1/p'; }

# 1. A far array through the cluster: verified, every master took pages, nothing left after exit.
out=$(FARMEM_STATS=1 bench "$URI" 64M --ops 20000)
stats=$(grep -o '"redis":{[^}]*}' "$tmp/err")
spread=0
while read -r port _; do (($(set_calls "$port") > 100)) && spread=$((spread + 1)); done < <(masters)
if grep -q '"verified":true' <<<"$out" && grep -q '"nodes":3' <<<"$stats" && grep -q '"wait_replicas":1' <<<"$stats" &&
  ((spread == 3)); then
  ok "64 MiB far array at 25% local through a 3-master cluster verified, pages on all 3 masters ($stats)"
else bad "far array through the cluster: $out $stats spread=$spread $(tail -2 "$tmp/err")"; fi
[[ $(cluster_keys) == 0 ]] && ok "after exit no farmem key remains on any master" || bad "$(cluster_keys) keys left"

# 2. Resharding during a run: a seventh node joins as an empty master and 2000
#    slots move to it from another master, keys and all.
start_redis node7 --cluster-enabled yes --cluster-config-file nodes-7.conf --cluster-node-timeout 1000 \
  --cluster-port "$(free_port)"
P7=$RPORT
redis-cli --cluster add-node "127.0.0.1:$P7" "127.0.0.1:${PORTS[0]}" >"$tmp/add.log" 2>&1 ||
  bad "add-node: $(tail -3 "$tmp/add.log")"
for _ in $(seq 200); do
  known=0
  for p in "${PORTS[@]}"; do rcli "$p" cluster nodes | grep -q "127.0.0.1:$P7@.* master .* connected" && known=$((known + 1)); done
  # all agree, from the new node's view and from the one reshard asks: it may start
  ((known == 6)) && redis-cli --cluster check "127.0.0.1:$P7" >/dev/null 2>&1 &&
    redis-cli --cluster check "127.0.0.1:${PORTS[0]}" >/dev/null 2>&1 && break
  sleep 0.1
done
# Long enough to outlast the resharding (checked below), whatever the machine's speed.
FARMEM_STATS=1 bench "$URI" 64M --ops 300000 >"$tmp/reshard.out" &
client=$!
for _ in $(seq 300); do (($(cluster_keys) > 3000)) && break; sleep 0.05; done
read -r fport from < <(masters | grep -v "^$P7 " | sed -n 1p)  # one of the first three (the new one is empty)
to=$(rcli "$P7" cluster myid)
reshard "$from" "$to" 2000 "$tmp/reshard.log"; reshard_rc=$?
kill -0 "$client" 2>/dev/null || bad "the run ended before the resharding did: raise its --ops"
wait "$client"; rc=$?
stats=$(grep -o '"redis":{[^}]*}' "$tmp/err")
if ((rc == 0 && reshard_rc == 0)) && grep -q '"verified":true' "$tmp/reshard.out" && grep -q '"redirects":[1-9]' <<<"$stats"; then
  ok "2000 slots resharded to a new master during a run: verified, redirections followed ($stats)"
else bad "resharding: rc $rc reshard rc $reshard_rc $(cat "$tmp/reshard.out") $stats $(tail -3 "$tmp/err") $(tail -3 "$tmp/reshard.log")"; fi

# 3. A client stopped (SIGSTOP) while 1500 slots move back, then killed with
#    SIGKILL: it never saw the new map, and its reaper, which asks for it,
#    removes its keys from every master.
FARMEM_BACKEND=$URI FARMEM_FAR_MEM=256M "$BENCH" --working-set 64M --local-mem 25% --ops 100000000 --json \
  >/dev/null 2>&1 &
victim=$!
for _ in $(seq 300); do (($(cluster_keys) > 3000)) && break; sleep 0.1; done
kill -STOP "$victim"
reshard "$to" "$from" 1500 "$tmp/reshard2.log" || bad "reshard back: $(tail -3 "$tmp/reshard2.log")"
left=$(cluster_keys)
kill -9 "$victim"; wait "$victim" 2>/dev/null
for _ in $(seq 100); do [[ $(cluster_keys) == 0 ]] && break; sleep 0.1; done
((left > 0)) && [[ $(cluster_keys) == 0 ]] &&
  ok "a client stopped while slots moved, then killed: its reaper removed its $left keys from every master" ||
  bad "killed client: $left keys, $(cluster_keys) after 10 s"

# 4. An unmodified program under farmem-run: output identical to a plain run.
if [[ -n $RUN ]]; then
  run_python "$URI"; rc=$?
  for _ in $(seq 100); do [[ $(cluster_keys) == 0 ]] && break; sleep 0.1; done
  if ((rc == 0)) && cmp -s "$tmp/plain.out" "$tmp/run.out" && grep -q '"redis":{"reads":[0-9]*,"writes":[1-9]' "$tmp/run.err" &&
    [[ $(cluster_keys) == 0 ]]; then
    ok "python3 under farmem-run over redis+cluster://: identical output, no key left after it"
  else bad "farmem-run: rc $rc $(cat "$tmp/run.out") $(tail -2 "$tmp/run.err")"; fi
fi

# 5. The cluster as one member of a replicas:2 pool (named in an @FILE: its
#    URI has commas) beside a standalone Redis: verified, no key left on either.
start_redis lone
printf '%s\nredis://127.0.0.1:%s\n' "$URI" "$RPORT" >"$tmp/pool.txt"
out=$(FARMEM_STATS=1 FARMEM_REDUNDANCY=replicas:2 bench "@$tmp/pool.txt" 32M --ops 5000)
if grep -q '"verified":true' <<<"$out" && grep -q '"servers_up":2' "$tmp/err" && [[ $(cluster_keys) == 0 ]] &&
  [[ $(farmem_keys "$RPORT") == 0 ]]; then
  ok "a pool of the cluster and a standalone Redis (replicas:2): verified, no key left"
else bad "cluster in a pool: $out $(tail -2 "$tmp/err")"; fi

# 6. One line each: a redis:// URI at a cluster node, a WAIT above the replicas.
expect_error "redis:// at a cluster node" "is a node of a Redis Cluster (it answered MOVED" \
  env FARMEM_BACKEND="redis://127.0.0.1:${PORTS[0]}" FARMEM_FAR_MEM=256M "$BENCH" --working-set 32M --local-mem 25% --ops 2000
expect_error "WAIT above the replicas" "FARMEM_REDIS_WAIT=2 but a master of the Redis Cluster at .* has [01] connected replicas" \
  env FARMEM_BACKEND="$URI" FARMEM_REDIS_WAIT=2 FARMEM_FAR_MEM=256M "$BENCH" --working-set 32M --local-mem 25% --ops 2000

# 7. A master killed mid-run: its replica is promoted (node timeout 1 s) and,
#    with WAIT 1 (the default here), nothing acknowledged is lost.
FARMEM_STATS=1 bench "$URI" 64M --ops 200000 >"$tmp/failover.out" &
client=$!
for _ in $(seq 300); do (($(cluster_keys) > 3000)) && break; sleep 0.05; done
vport=$fport  # a master with a replica (the seventh has none)
for i in "${!PORTS[@]}"; do [[ ${PORTS[$i]} == "$vport" ]] && kill -9 "${NODE_PIDS[$i]}"; done
wait "$client"; rc=$?
stats=$(grep -o '"redis":{[^}]*}' "$tmp/err")
if ((rc == 0)) && grep -q '"verified":true' "$tmp/failover.out" && grep -q '"failovers":[1-9]' <<<"$stats"; then
  ok "master on port $vport killed mid-run, its replica promoted: verified ($stats)"
else bad "failover: rc $rc $(cat "$tmp/failover.out") $stats $(tail -3 "$tmp/err")"; fi

exit $((fails > 0))
