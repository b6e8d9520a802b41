#!/usr/bin/env bash
# bench/pool_compare.sh -- one memory server against a pool of three with
# FARMEM_REDUNDANCY none, replicas:2 and ec:2+1 (with and without the spare
# read), interleaved, farmem-bench (far pointers, uniform) over tcp on
# loopback: median ops/s, fault p50/p99, bytes sent per page written back,
# server memory per GiB of working set. Then the time to restore redundancy:
# ec:2+1 over 4 servers with one killed mid-run, without a rate limit, at the
# default FARMEM_REPAIR_RATE and at a low one.
#   bench/pool_compare.sh [--rounds 3] [--working-set 512M] [--local 25%] [--ops 200000] [--csv FILE]
#   --csv FILE: one row per farmem-bench run appended to FILE (the header when it is new):
#     bench,config,workload,mode,transport,local_mem,working_set_bytes,servers,redundancy,
#     ec_spare_read,repair_rate,kill_after_s,repetition,ops_per_sec,fault_p50_ns,fault_p99_ns,
#     bytes_sent_per_writeback,server_bytes_per_ws_byte,pages_repaired,repair_ms,degraded_reads,
#     redundancy_restored,verified
#     (config as printed; local_mem is --local; the repair runs have kill_after_s 4 and
#     repetition 1; a column a run does not measure is empty)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=$ROOT/build/bench/farmem-bench
SERVER=$ROOT/build/apps/farmem-server/farmem-server
ROUNDS=3 WS=512M LOCAL=25% OPS=200000 CSV=""
while [[ $# -gt 0 ]]; do
  case $1 in
    --rounds) ROUNDS=$2; shift 2 ;;
    --working-set) WS=$2; shift 2 ;;
    --local) LOCAL=$2; shift 2 ;;
    --ops) OPS=$2; shift 2 ;;
    --csv) CSV=$2; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "pool_compare.sh: unknown option $1; see --help" >&2; exit 2 ;;
  esac
done
[[ -x $BENCH && -x $SERVER ]] || { echo "pool_compare.sh: build first (./run.sh or scripts/setup.sh)" >&2; exit 2; }
[[ -z $CSV ]] || : >>"$CSV" || { echo "pool_compare.sh: cannot write --csv file $CSV" >&2; exit 2; }
/usr/bin/python3 - "$BENCH" "$SERVER" "$ROUNDS" "$WS" "$LOCAL" "$OPS" "$CSV" <<'PY'
import csv, json, os, re, signal, statistics, subprocess, sys, threading, time
bench, server, rounds, ws, local, ops = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6]
csv_path = sys.argv[7]
procs = []

CSV_COLUMNS = ["bench", "config", "workload", "mode", "transport", "local_mem", "working_set_bytes", "servers",
               "redundancy", "ec_spare_read", "repair_rate", "kill_after_s", "repetition", "ops_per_sec",
               "fault_p50_ns", "fault_p99_ns", "bytes_sent_per_writeback", "server_bytes_per_ws_byte",
               "pages_repaired", "repair_ms", "degraded_reads", "redundancy_restored", "verified"]

def csv_row(name, n, redundancy, rep, res, st, used, repair_rate="", kill_after=""):
    """--csv: one farmem-bench run, its configuration and then what it measured."""
    if not csv_path:
        return
    pool = st.get("pool", {})
    red = (redundancy or "").split()
    row = {"bench": "pool_compare", "config": name, "workload": res["workload"], "mode": res["mode"],
           "transport": "tcp", "local_mem": local, "working_set_bytes": res["working_set_bytes"], "servers": n,
           "redundancy": red[0] if red else "",
           "ec_spare_read": ("0" if "nospare" in red else "1") if red and red[0].startswith("ec:") else "",
           "repair_rate": repair_rate, "kill_after_s": kill_after,
           "repetition": rep, "ops_per_sec": res["ops_per_sec"], "fault_p50_ns": res["fault_p50_ns"],
           "fault_p99_ns": res["fault_p99_ns"],
           "bytes_sent_per_writeback": "%.1f" % (pool.get("bytes_out", st["bytes_out"]) / max(1, st["writebacks"])),
           "server_bytes_per_ws_byte": "%.4f" % (used / res["working_set_bytes"]) if used is not None else "",
           "pages_repaired": pool.get("pages_repaired", ""), "repair_ms": pool.get("repair_ms", ""),
           "degraded_reads": pool.get("degraded_reads", ""), "redundancy_restored": pool.get("redundancy_restored", ""),
           "verified": res["verified"]}
    new = os.path.getsize(csv_path) == 0
    with open(csv_path, "a", newline="") as f:
        w = csv.DictWriter(f, CSV_COLUMNS, lineterminator="\n")
        if new:
            w.writeheader()
        w.writerow(row)

def start(n):
    uris = []
    for _ in range(n):
        p = subprocess.Popen([server, "--listen", "tcp://127.0.0.1:0", "--capacity", "64G"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        procs.append(p)
        m = re.search(r"listening on (tcp://127\.0\.0\.1:\d+)", p.stdout.readline())
        uris.append(m.group(1))
    return uris

def stop():
    for p in procs:
        p.kill(); p.wait()
    procs.clear()

def server_used():
    # Each server prints a usage line on SIGUSR1: the bytes its sessions hold.
    total = 0
    for p in procs:
        if p.poll() is not None: continue
        p.send_signal(signal.SIGUSR1)
        total += json.loads(p.stdout.readline())["used_bytes"]
    return total

def run(uris, redundancy, kill_after=None, repair_rate=None):
    env = {**os.environ, "FARMEM_BACKEND": ",".join(uris), "FARMEM_STATS": "1", "FARMEM_FAR_MEM": "2G"}
    if repair_rate: env["FARMEM_REPAIR_RATE"] = repair_rate
    if redundancy and redundancy.endswith(" nospare"):
        redundancy = redundancy.split()[0]
        env["FARMEM_EC_SPARE_READ"] = "0"
    if redundancy: env["FARMEM_REDUNDANCY"] = redundancy
    if kill_after is not None:
        threading.Timer(kill_after, lambda: procs[1].kill()).start()
    b = subprocess.Popen([bench, "--working-set", ws, "--local-mem", local, "--ops", ops, "--json"],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err, used = [], None
    for line in b.stderr:  # progress lines come during the measured ops: every page has gone far by then
        err.append(line)
        if used is None and "measured" in line and kill_after is None: used = server_used()
    out = b.stdout.read()
    assert b.wait() == 0, "".join(err)
    res = json.loads(out)
    st = json.loads([l for l in err if l.startswith('{"farmem_stats"')][-1])
    assert res["verified"], "not verified"
    return res, st, used

configs = [("1 server", 1, None), ("3 servers, none", 3, "none"),
           ("3 servers, replicas:2", 3, "replicas:2"), ("3 servers, ec:2+1", 3, "ec:2+1"),
           ("3 servers, ec:2+1, FARMEM_EC_SPARE_READ=0", 3, "ec:2+1 nospare")]
rows = {c[0]: [] for c in configs}
for r in range(rounds):
    for name, n, red in configs:
        uris = start(n)
        try:
            res, st, used = run(uris, red)
        finally:
            stop()
        pool = st.get("pool", {})
        sent = pool.get("bytes_out", st["bytes_out"])
        written = max(1, st["writebacks"])
        csv_row(name, n, red, r + 1, res, st, used)
        rows[name].append((res["ops_per_sec"], res["fault_p50_ns"], res["fault_p99_ns"], sent / written,
                           used / res["working_set_bytes"] if used is not None else None))
        print(f"  [round {r + 1}/{rounds}] {name}: {res['ops_per_sec']:.0f} ops/s", file=sys.stderr)

print(f"farmem-bench --mode sw, uniform, {ws} at {local} local, {ops} ops, tcp on loopback; medians of {rounds}")
print()
print("| config | ops/s | vs 1 server | fault p50 | fault p99 | bytes sent per page written back | server memory per GiB of working set |")
print("| --- | --- | --- | --- | --- | --- | --- |")
base = statistics.median(x[0] for x in rows["1 server"])
for name, _, _ in configs:
    v = rows[name]
    med = lambda i: statistics.median(x[i] for x in v)
    mem = [x[4] for x in v if x[4] is not None]
    print(f"| {name} | {med(0):.0f} | {med(0) / base:.2f}x | {med(1) / 1000:.0f} us | {med(2) / 1000:.0f} us | "
          f"{med(3):.0f} | " + (f"{statistics.median(mem):.2f} GiB |" if mem else "(no progress line: run longer) |"))

print()
print("ec:2+1 over 4 servers, one killed after 4 s, by FARMEM_REPAIR_RATE:")
print()
print("| FARMEM_REPAIR_RATE | pages rebuilt | time | rate of pages | run ops/s | degraded reads | restored | verified |")
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
for rate in ("0", "256M", "32M"):
    uris = start(4)
    try:
        res, st, _ = run(uris, "ec:2+1", kill_after=4, repair_rate=rate)
    finally:
        stop()
    csv_row("ec:2+1 over 4 servers, one killed", 4, "ec:2+1", 1, res, st, None, rate, 4)
    p = st["pool"]
    print(f"| {rate} | {p['pages_repaired']} | {p['repair_ms']} ms | "
          f"{p['pages_repaired'] * 4096 / max(1, p['repair_ms']) / 1000:.1f} MB/s | {res['ops_per_sec']:.0f} | "
          f"{p['degraded_reads']} | {p['redundancy_restored']} | {res['verified']} |")
PY
