#!/usr/bin/env bash
# farmem-kv end to end: a real server process and real sockets. Four clients
# store about 120 MiB of values behind a 16 MiB local budget, read them back,
# overwrite and delete a third each, and check every value; the server's
# resident memory stays near its budget. Then protocol errors, a full store,
# 300 connections at once and the 301st refused, bad command lines, SIGTERM.
set -uo pipefail
KV=$1
KV_LOAD=$2
PY=/usr/bin/python3
source "$(dirname "$0")/harness.sh"
source "$(dirname "$0")/kv_harness.sh"


cat >"$tmp/client.py" <<'PY'
import hashlib, os, socket, sys, threading

port, mode = int(sys.argv[1]), sys.argv[2]

class Conn:
    def __init__(self):
        self.s = socket.create_connection(("127.0.0.1", port))
        self.buf = b""
    def send(self, b):
        self.s.sendall(b)
    def line(self):
        while b"\r\n" not in self.buf:
            d = self.s.recv(1 << 16)
            if not d:
                raise EOFError("connection closed")
            self.buf += d
        l, self.buf = self.buf.split(b"\r\n", 1)
        return l
    def exact(self, n):
        while len(self.buf) < n:
            d = self.s.recv(1 << 16)
            if not d:
                raise EOFError("connection closed")
            self.buf += d
        b, self.buf = self.buf[:n], self.buf[n:]
        return b
    def set(self, k, v, flags=0):
        self.send(b"set %s %d 0 %d\r\n%s\r\n" % (k, flags, len(v), v))
        return self.line()
    def get_many(self, keys):
        self.send(b"get " + b" ".join(keys) + b"\r\n")
        out = {}
        while True:
            l = self.line()
            if l == b"END":
                return out
            _, k, flags, n = l.split()
            out[k] = (int(flags), self.exact(int(n)))
            assert self.exact(2) == b"\r\n"
    def cmd(self, c):
        self.send(c + b"\r\n")
        return self.line()

def value(k, version):
    h = hashlib.sha256(k + b"/%d" % version).digest()
    n = 200 + int.from_bytes(h[:2], "little") % 11800
    return (h * (n // 32 + 1))[:n]

def worker(t, errors):
    c = Conn()
    keys = [b"t%d:key:%06d" % (t, i) for i in range(5000)]
    for k in keys:
        r = c.set(k, value(k, 0), flags=t)
        if r != b"STORED":
            errors.append("set %s: %s" % (k, r)); return
    def check(expect):
        for i in range(0, len(keys), 10):
            got = c.get_many(keys[i:i + 10])
            for k in keys[i:i + 10]:
                want = expect(k)
                if want is None:
                    if k in got: errors.append("%s: deleted but returned" % k)
                elif k not in got:
                    errors.append("%s: missing" % k)
                elif got[k] != (t, want):
                    errors.append("%s: wrong value (%d bytes)" % (k, len(got[k][1])))
            if len(errors) > 5: return
    check(lambda k: value(k, 0))
    for i, k in enumerate(keys):
        if i % 3 == 1 and c.set(k, value(k, 1), flags=t) != b"STORED": errors.append("overwrite " + str(k))
        if i % 3 == 2 and c.cmd(b"delete " + k) != b"DELETED": errors.append("delete " + str(k))
    check(lambda k: None if int(k[-6:]) % 3 == 2 else value(k, int(k[-6:]) % 3))

def stats(c):
    c.send(b"stats\r\n")
    out = {}
    while True:
        l = c.line()
        if l == b"END": return out
        _, k, v = l.split()
        out[k.decode()] = int(v) if v.isdigit() else v

if mode == "load":
    errors = []
    ts = [threading.Thread(target=worker, args=(t, errors)) for t in range(4)]
    for t in ts: t.start()
    for t in ts: t.join()
    st = stats(Conn())
    if errors:
        print("errors:", errors[:5]); sys.exit(1)
    print("items %d bytes %d fetches %d page evictions %d" % (st["curr_items"], st["bytes"], st["farmem_fetches"], st["farmem_page_evictions"]))
    sys.exit(0 if st["curr_items"] == 4 * (5000 - 5000 // 3) and st["farmem_fetches"] > 0 and st["farmem_page_evictions"] > 0 and st["evictions"] == 0 else 1)

if mode == "errors":
    c = Conn()
    checks = [
        ("value over 1 MiB refused, connection kept", c.set(b"big", b"x" * (2 << 20)), b"SERVER_ERROR object too large for cache"),
        ("connection still serves", c.set(b"small", b"ok"), b"STORED"),
        ("bad command line", c.cmd(b"set k notanumber 0 1"), b"CLIENT_ERROR bad command line format"),
        ("unknown command", c.cmd(b"frobnicate"), b"ERROR"),
        ("key too long", c.cmd(b"get " + b"k" * 251), b"CLIENT_ERROR bad command line format"),
        ("delete missing", c.cmd(b"delete nosuchkey"), b"NOT_FOUND"),
        ("expiry accepted", c.cmd(b"set e 0 60 1\r\nx"), b"STORED"),
    ]
    bigs = {b"big%d" % i: bytes([65 + i]) * 900000 for i in range(4)}
    stored = [c.set(k, v) for k, v in bigs.items()]
    checks.append(("four 900 KB values in one get (streamed)",
                   b"ok" if stored == [b"STORED"] * 4 and c.get_many(list(bigs)) == {k: (0, v) for k, v in bigs.items()} else b"wrong", b"ok"))
    c2 = Conn()
    c2.send(b"set k 0 0 3\r\nabcde\r\n")
    checks.append(("bad data chunk", c2.line(), b"CLIENT_ERROR bad data chunk"))
    fail = [(n, got, want) for n, got, want in checks if got != want]
    for n, got, want in checks:
        print(("ok   " if got == want else "FAIL ") + n + ": " + got.decode())
    sys.exit(1 if fail else 0)

if mode == "full":
    c = Conn()
    for i in range(100):
        r = c.set(b"k%d" % i, b"v" * 100000)
        if r != b"STORED":
            print(r.decode(), "after", i, "values")
            sys.exit(0 if r == b"SERVER_ERROR out of memory storing object" and i > 0 else 1)
    print("a 2 MiB store took 10 MB"); sys.exit(1)

if mode == "connections":
    # 300 open at once (one uthread each), all answering, interleaved; the 301st refused.
    conns = [Conn() for _ in range(300)]
    for i, c in enumerate(conns):
        c.send(b"set conn%d 0 0 %d\r\n%s\r\n" % (i, len(str(i)), str(i).encode()))
    for c in conns:
        if c.line() != b"STORED": print("a connection failed to store"); sys.exit(1)
    for i, c in enumerate(reversed(conns)):
        k = 299 - i
        if c.get_many([b"conn%d" % k]) != {b"conn%d" % k: (0, str(k).encode())}: print("wrong value on", k); sys.exit(1)
    extra = Conn()
    r = extra.line()
    print("300 connections served; the 301st got", r.decode())
    sys.exit(0 if r == b"SERVER_ERROR too many connections" else 1)
PY

# 1. Four clients, 120 MiB of values, 16 MiB local.
if FARMEM_STATS=1 start_kv main --local-mem 16M --capacity 512M --max-connections 300; then
  if out=$(timeout 600 "$PY" "$tmp/client.py" "$port" load 2>&1); then ok "load and verify: $out"
  else bad "load and verify: $out"; fi
  rss=$(awk '/^VmRSS/ {print int($2 / 1024)}' "/proc/$kv_pid/status")
  if ((rss <= 16 + 48)); then ok "server resident memory ${rss} MiB with about 80 MiB stored (budget 16 MiB)"
  else bad "server resident memory ${rss} MiB exceeds budget 16 + 48 MiB"; fi
  if out=$(timeout 60 "$PY" "$tmp/client.py" "$port" errors 2>&1); then ok "protocol errors:"; echo "$out" | sed 's/^/     /'
  else bad "protocol errors:"; echo "$out" | sed 's/^/     /'; fi
  if out=$(timeout 120 "$PY" "$tmp/client.py" "$port" connections 2>&1); then ok "connections: $out"
  else bad "connections: $out"; fi
  if out=$(timeout 300 "$KV_LOAD" --server "127.0.0.1:$port" --keys 5000 --value-size 3000 --ops 3000 \
      --connections 16 --workload zipf) && [[ $out == *'"verified":true'* ]]; then ok "farmem-kv-load: $out"
  else bad "farmem-kv-load: $out"; fi
  kill -TERM "$kv_pid"
  timeout 15 tail --pid="$kv_pid" -f /dev/null
  wait "$kv_pid"; rc=$?
  if ((rc == 0)) && grep -q '"evictions"' "$tmp/main.err"; then ok "SIGTERM: exit 0, statistics printed"
  else bad "SIGTERM: exit $rc, stderr: $(cat "$tmp/main.err")"; fi
fi

# 2. A full store refuses new values with memcached's error.
if FARMEM_STATS=1 start_kv full --local-mem 16M --capacity 2M; then
  if out=$(timeout 60 "$PY" "$tmp/client.py" "$port" full 2>&1); then ok "full store: $out"
  else bad "full store: $out"; fi
  kill -TERM "$kv_pid"; wait "$kv_pid" 2>/dev/null
fi

# 3. Bad command lines: one line, exit 2.
expect_error() {
  local name=$1 pattern=$2
  shift 2
  timeout 60 "$@" >/dev/null 2>"$tmp/err"
  local rc=$?
  if ((rc == 2)) && [[ $(wc -l <"$tmp/err") -eq 1 ]] && grep -qE "$pattern" "$tmp/err"; then ok "$name: $(cat "$tmp/err")"
  else bad "$name: rc=$rc $(cat "$tmp/err")"; fi
}
expect_error "bad --listen" "is not HOST:PORT" "$KV" --listen nonsense
expect_error "bad port" "port must be 0-65535" "$KV" --listen 127.0.0.1:99999
expect_error "bad capacity" "capacity.*not a size" "$KV" --capacity lots
expect_error "capacity above far memory" "more than far memory.*FARMEM_FAR_MEM" env FARMEM_FAR_MEM=1G "$KV" --capacity 2G
expect_error "bad local memory" "not a size" "$KV" --local-mem lots
expect_error "unknown option" "unknown option --frobnicate" "$KV" --frobnicate
expect_error "bad --threads" "threads '0' is not a number from 1 to 60" "$KV" --threads 0
expect_error "bad --max-connections" "max-connections 'many' is not a number" "$KV" --max-connections many
expect_error "--cache takes no value" "unknown option yes" "$KV" --cache yes
"$PY" -c 'import socket,time; s=socket.socket(); s.bind(("127.0.0.1",0)); s.listen(); print(s.getsockname()[1], flush=True); time.sleep(30)' >"$tmp/busy" &
pids+=($!)
for _ in $(seq 50); do [[ -s $tmp/busy ]] && break; sleep 0.1; done
expect_error "port in use" "cannot listen on 127.0.0.1:$(cat "$tmp/busy").*pick a free port" "$KV" --listen "127.0.0.1:$(cat "$tmp/busy")"

echo "$fails failure(s)"
((fails == 0))
