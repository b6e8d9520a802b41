#!/usr/bin/env bash
# bench/redis_compare.sh -- farmem-bench (far pointers, uniform) over shm, its
# own tcp server, a standalone Redis, a 3-master Redis Cluster and a 3-master
# cluster with a replica each (WAIT 1), blocking and with 64 uthreads,
# interleaved: median ops/s and fault p50/p99 over the rounds. All on loopback;
# the script starts and stops every server. With --big, instead: one
# multi-GiB far array at 10% local through the standalone Redis and through
# the 3+3 cluster, verified (the integrity run of docs/redis.md).
#   bench/redis_compare.sh [--rounds 3] [--working-set 256M] [--local 25%] [--ops 100000]
#   bench/redis_compare.sh --big [--working-set 2G] [--local 10%] [--ops 400000]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=$ROOT/build/bench/farmem-bench
SERVER=$ROOT/build/apps/farmem-server/farmem-server
ROUNDS=3 WS="" LOCAL="" OPS="" BIG=0
while [[ $# -gt 0 ]]; do
  case $1 in
    --rounds) ROUNDS=$2; shift 2 ;;
    --working-set) WS=$2; shift 2 ;;
    --local) LOCAL=$2; shift 2 ;;
    --ops) OPS=$2; shift 2 ;;
    --big) BIG=1; shift ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "redis_compare.sh: unknown option $1; see --help" >&2; exit 2 ;;
  esac
done
if ((BIG)); then WS=${WS:-2G} LOCAL=${LOCAL:-10%} OPS=${OPS:-400000}; else WS=${WS:-256M} LOCAL=${LOCAL:-25%} OPS=${OPS:-100000}; fi
[[ -x $BENCH && -x $SERVER ]] || { echo "redis_compare.sh: build first (./run.sh or scripts/setup.sh)" >&2; exit 2; }
command -v redis-server >/dev/null && command -v redis-cli >/dev/null ||
  { echo "redis_compare.sh: needs redis-server and redis-cli (apt-get install redis-server)" >&2; exit 2; }
/usr/bin/python3 - "$BENCH" "$SERVER" "$ROUNDS" "$WS" "$LOCAL" "$OPS" "$BIG" <<'PY'
import json, os, re, socket, statistics, subprocess, sys, tempfile, time
bench, server, rounds, ws, local, ops, big = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6], sys.argv[7] == "1"
tmp = tempfile.mkdtemp(prefix="redis_compare.")
procs = []

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def cli(port, *args):
    return subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True).stdout

def redis(name, *extra):
    port = free_port()
    procs.append(subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                   "--appendonly", "no", "--dir", tmp, "--dbfilename", name + ".rdb", *extra],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    for _ in range(200):
        if "PONG" in cli(port, "ping"): return port
        time.sleep(0.05)
    sys.exit("redis_compare.sh: redis-server did not start")

def cluster(name, replicas):
    ports = [redis("%s%d" % (name, i), "--cluster-enabled", "yes", "--cluster-config-file", "%s-%d.conf" % (name, i),
                   "--cluster-port", str(free_port()), "--repl-diskless-sync-delay", "0")
             for i in range(3 * (1 + replicas))]
    subprocess.run(["redis-cli", "--cluster", "create", *["127.0.0.1:%d" % p for p in ports],
                    "--cluster-replicas", str(replicas), "--cluster-yes"], check=True, capture_output=True)
    for _ in range(300):  # every node ok, and CLUSTER SLOTS lists every node (a replica once it synced)
        if all("cluster_state:ok" in cli(p, "cluster", "info") and
               len(re.findall(r"^[0-9a-f]{40}$", cli(p, "cluster", "slots"), re.M)) == len(ports) for p in ports):
            return ports
        time.sleep(0.1)
    sys.exit("redis_compare.sh: the cluster did not come up")

def farmem_server():
    p = subprocess.Popen([server, "--listen", "tcp://127.0.0.1:0", "--capacity", "8G"], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True)
    procs.append(p)
    m = re.search(r"tcp://127.0.0.1:(\d+)", p.stdout.readline())
    return int(m.group(1))

def run(backend, uthreads, extra=None):
    env = dict(os.environ, FARMEM_BACKEND=backend, FARMEM_FAR_MEM="8G", FARMEM_STATS="1", **(extra or {}))
    t0 = time.time()
    r = subprocess.run([bench, "--working-set", ws, "--local-mem", local, "--ops", ops, "--uthreads", str(uthreads),
                        "--json"], env=env, capture_output=True, text=True)
    wall = time.time() - t0
    if r.returncode != 0:
        sys.exit("redis_compare.sh: %s: %s" % (backend, r.stderr.strip().splitlines()[-1:]))
    res = json.loads(r.stdout.strip().splitlines()[-1])
    st = next((json.loads(l) for l in r.stderr.splitlines() if l.startswith('{"farmem_stats"')), {})
    return res, st, wall

try:
    standalone = redis("standalone")
    c3 = cluster("c3_", 0)
    c33 = cluster("c33_", 1)
    seeds = lambda ports: "redis+cluster://" + ",".join("127.0.0.1:%d" % p for p in ports[:2])
    if big:
        print("%s far array at %s local, %s ops, 16 uthreads" % (ws, local, ops))
        for name, backend in (("redis standalone", "redis://127.0.0.1:%d" % standalone), ("redis cluster 3+3", seeds(c33))):
            res, st, wall = run(backend, 16)
            rd = st.get("redis", {})
            print("%-18s verified=%s  %.1f s  %.0f ops/s  faults %d  writebacks %d  waits %d  nodes %s" %
                  (name, res["verified"], wall, res["ops_per_sec"], res["faults"], res["writebacks"], rd.get("waits", 0),
                   rd.get("nodes")))
            if not res["verified"]: sys.exit(1)
        sys.exit(0)
    configs = [("shm", "shm"), ("tcp", "tcp://127.0.0.1:%d" % farmem_server()),
               ("redis standalone", "redis://127.0.0.1:%d" % standalone),
               ("redis cluster 3", seeds(c3)), ("redis cluster 3+3, WAIT 1", seeds(c33))]
    results = {}
    for rnd in range(rounds):
        for uthreads in (0, 64):
            for name, backend in configs:
                res, st, _ = run(backend, uthreads)
                if not res["verified"]: sys.exit("redis_compare.sh: %s not verified" % name)
                results.setdefault((name, uthreads), []).append(res)
    print("uniform, %s working set, %s local, %s ops, %d rounds, medians" % (ws, local, ops, rounds))
    print("| backend | uthreads | ops/s | fault p50 | fault p99 |")
    print("| --- | --- | --- | --- | --- |")
    for uthreads in (0, 64):
        for name, _ in configs:
            rs = results[(name, uthreads)]
            med = lambda k: statistics.median(r[k] for r in rs)
            lat = ("%.0f µs | %.0f µs" % (med("fault_p50_ns") / 1e3, med("fault_p99_ns") / 1e3)) if uthreads == 0 else "(parked) | "
            print("| %s | %d | %.0f | %s |" % (name, uthreads, med("ops_per_sec"), lat))
finally:
    for p in procs: p.kill()
    for p in procs: p.wait()
    subprocess.run(["rm", "-rf", tmp])
PY
