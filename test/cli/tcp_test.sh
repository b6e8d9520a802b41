#!/usr/bin/env bash
# End to end over tcp:// with the real farmem-server process: integrity of a
# multi-GiB far array at low local memory, two clients at once, isolation
# between clients, tokens, malformed and truncated messages (plus a bounded
# random fuzz run against the live server), a server killed mid-run, a client
# killed mid-run (server stays healthy, memory reclaimed), clean SIGTERM.
set -uo pipefail
BENCH=$1
SERVER=$2
source "$(dirname "${BASH_SOURCE[0]}")/harness.sh"

usage_line() {  # asks the server for a usage line, prints the newest
  kill -USR1 "$1"; sleep 0.3; grep '"farmem_server":"usage"' "$2" | tail -1
}

echo "s3cret-token" >"$tmp/token"
echo "wrong-token" >"$tmp/wrong"
start_tcp_server main --capacity 12G --token-file "$tmp/token"
MAIN=$SPID
export FARMEM_TOKEN_FILE=$tmp/token
URI=tcp://127.0.0.1:$PORT

# 1. Integrity of a 2 GiB far array at 10% local memory over TCP.
out=$(FARMEM_BACKEND=$URI FARMEM_FAR_MEM=3G timeout 300 "$BENCH" --working-set 2G --local-mem 10% \
      --ops 200000 --uthreads 64 --json 2>"$tmp/e1")
if grep -q '"verified":true' <<<"$out" && grep -q '"evictions":[1-9]' <<<"$out"; then
  ok "2 GiB far array at 10% local over tcp verified"
else bad "2 GiB over tcp: $out $(cat "$tmp/e1")"; fi

# 2. Two clients at once, both exact.
for i in 1 2; do
  FARMEM_BACKEND=$URI FARMEM_FAR_MEM=1G timeout 300 "$BENCH" --working-set 512M --local-mem 25% \
    --ops 100000 --uthreads 32 --json >"$tmp/c$i" 2>&1 &
  cpid[$i]=$!
done
wait "${cpid[1]}"; r1=$?
wait "${cpid[2]}"; r2=$?
if [[ $r1 -eq 0 && $r2 -eq 0 ]] && grep -q '"verified":true' "$tmp/c1" && grep -q '"verified":true' "$tmp/c2"; then
  ok "two clients at once, both verified"
else bad "two clients: $(cat "$tmp/c1" "$tmp/c2")"; fi

# 3. Protocol-level checks with a raw client: isolation, bad token, malformed,
#    truncated and random messages; the server must stay up and keep serving.
python3 - "$PORT" "$tmp/token" <<'PY'
import hashlib, hmac, os, random, socket, struct, sys, time
port = int(sys.argv[1]); token = open(sys.argv[2]).read().strip().encode()
MAGIC, VER = 0x50574d46, 2
HELLO, READ, WRITE, DISCARD, USAGE, PROVE, REPLY, ERROR, CHALLENGE = 1, 2, 3, 4, 5, 6, 16, 17, 18
def hdr(op, id=0, off=0, size=0, length=0, status=0, ver=VER):
    return struct.pack("<IHHQQIIII", MAGIC, ver, op, id, off, size, length, status, 0)
def conn():
    s = socket.create_connection(("127.0.0.1", port), timeout=5); return s
def recv_exact(s, n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c: raise EOFError
        b += c
    return b
def reply(s):
    h = recv_exact(s, 40)
    magic, ver, op, id, off, size, length, status, _ = struct.unpack("<IHHQQIIII", h)
    body = recv_exact(s, length) if length else b""
    return op, id, off, status, body
def proof(tok, label, sn, cn):
    return hmac.new(tok, label + b"\0" + sn + cn, hashlib.sha256).digest()
def handshake(s, tok=token, cap=1 << 30, attach=0):  # version 2: the token is proven, never sent
    s.sendall(hdr(HELLO, attach, cap, 1 if attach else 0, 0)); r = reply(s)
    if r[0] != CHALLENGE: return r
    cn = os.urandom(32)
    s.sendall(hdr(PROVE, 0, 0, 0, 64) + cn + proof(tok, b"farmem v2 client proof", r[4], cn))
    r2 = reply(s)
    if r2[0] == REPLY:
        if r2[4] != proof(token, b"farmem v2 server proof", r[4], cn): check(False, "the server proves it holds the token")
    return r2
def session(tok=token, cap=1 << 30):
    s = conn(); return s, handshake(s, tok, cap)
fails = 0
def check(cond, what):
    global fails
    print(("ok   " if cond else "FAIL ") + what); fails += 0 if cond else 1
# isolation: A writes page 0; B (another client) reads page 0 as zeros
a, r = session(); check(r[0] == REPLY and len(r[4]) == 32, "hello accepted after the challenge, with the server's proof")
page = bytes([0xAB]) * 4096
a.sendall(hdr(WRITE, 1, 0, 4096, 4096) + page); check(reply(a)[0] == REPLY, "write acked")
a.sendall(hdr(READ, 2, 0, 4096, 0)); check(reply(a)[4] == page, "client reads its own data")
b, r = session(); b.sendall(hdr(READ, 3, 0, 4096, 0))
check(reply(b)[4] == bytes(4096), "another client sees only its own (zero) memory")
b.sendall(hdr(READ, 4, 1 << 30, 4096, 0)); r = reply(b)
check(r[0] == ERROR and r[3] == 4, "read beyond the session's capacity refused")
# tokens
s, r = session(b"nope"); check(r[0] == ERROR and r[3] == 2, "wrong token refused")
s, r = session(b""); check(r[0] == ERROR and r[3] == 2, "missing token refused")
# attaching to a session needs the token too and a real session id
s = conn(); r = handshake(s, attach=12345)
check(r[0] == ERROR and r[3] == 5, "attach to an unknown session refused")
# a version 1 peer (its hello carries the token) is refused in its own version, naming both
s = conn(); s.sendall(hdr(HELLO, 0, 1 << 20, 0, len(token), ver=1) + token)
h = recv_exact(s, 40); r = struct.unpack("<IHHQQIIII", h); msg = recv_exact(s, r[6])
check(r[1] == 1 and r[2] == ERROR and r[7] == 6 and b"version 1 is not supported" in msg and b"speaks version 2" in msg,
      "a version 1 client is refused: " + msg.decode())
# malformed: bad magic, unknown op, huge length, request before hello, unaligned
for name, msg in [("bad magic", b"\0" * 40), ("unknown op", hdr(99)),
                  ("huge payload", hdr(WRITE, 1, 0, 1 << 30, 1 << 30)),
                  ("unaligned read", hdr(READ, 1, 100, 4096)),
                  ("read before hello", hdr(READ, 1, 0, 4096))]:
    s = conn(); s.sendall(msg)
    try: r = reply(s); check(r[0] == ERROR, name + " rejected with an error")
    except EOFError: check(False, name + ": connection dropped without an error")
    try: check(s.recv(1) == b"", name + ": connection closed after the error")
    except Exception: check(True, name + ": connection closed after the error")
# truncated header and truncated payload, then disconnect
s = conn(); s.sendall(hdr(READ, 1, 0, 4096)[:17]); s.close()
s, _ = session(); s.sendall(hdr(WRITE, 1, 0, 4096, 4096) + b"x" * 100); s.close()
# bounded fuzz: random bytes and mutated valid messages for 5 seconds
rng = random.Random(7); seeds = [hdr(READ, 1, 0, 4096), hdr(WRITE, 2, 0, 4096, 4096) + page,
                                  hdr(HELLO, 0, 1 << 20, 0, 0), hdr(PROVE, 0, 0, 0, 64) + bytes(64), hdr(USAGE, 3)]
end = time.time() + 5; n = 0
while time.time() < end:
    s = conn()
    if rng.random() < 0.5:
        handshake(s, cap=1 << 20)
    for _ in range(rng.randint(1, 8)):
        m = bytearray(rng.choice(seeds)) if rng.random() < 0.7 else bytearray(os.urandom(rng.randint(1, 200)))
        for _ in range(rng.randint(0, 4)):
            if m: m[rng.randrange(len(m))] ^= 1 << rng.randrange(8)
        try: s.sendall(bytes(m))
        except OSError: break
    s.close(); n += 1
s, r = session(); s.sendall(hdr(READ, 9, 0, 4096, 0)); r2 = reply(s)
check(r[0] == REPLY and r2[0] == REPLY, f"server healthy after {n} fuzz connections")
a.sendall(hdr(READ, 5, 0, 4096, 0)); check(reply(a)[4] == page, "first client's data intact after fuzzing")
sys.exit(1 if fails else 0)
PY
[[ $? -eq 0 ]] || fails=$((fails + 1))
kill -0 "$MAIN" 2>/dev/null && ok "server alive after malformed input" || bad "server died on malformed input"

# 4. Token errors from the runtime: one line, non-zero, fast.
for case in wrong missing; do
  if [[ $case == wrong ]]; then envs=(FARMEM_TOKEN_FILE=$tmp/wrong); else envs=(-u FARMEM_TOKEN_FILE); fi
  start=$(date +%s)
  env "${envs[@]}" FARMEM_BACKEND=$URI FARMEM_FAR_MEM=1G timeout 30 "$BENCH" --working-set 64M --ops 1000 >"$tmp/t.out" 2>"$tmp/t.err"
  rc=$?
  if [[ $rc -ne 0 && $rc -ne 124 && $(wc -l <"$tmp/t.err") -eq 1 ]] && grep -q "refused us: wrong or missing token.*FARMEM_TOKEN_FILE" "$tmp/t.err"; then
    ok "$case token: $(cat "$tmp/t.err") ($(( $(date +%s) - start ))s)"
  else bad "$case token: rc=$rc $(cat "$tmp/t.err")"; fi
done

# 5. Capacity is leased as pages are written: the default far memory (64 GiB of
#    address space) works against a 12 GiB server; a server that fills up ends
#    the client with one line naming it. Then a server that is not there.
out=$(env -u FARMEM_FAR_MEM FARMEM_BACKEND=$URI timeout 60 "$BENCH" --working-set 64M --ops 2000 --json 2>&1)
grep -q '"verified":true' <<<"$out" && ok "default far memory (64 GiB) against a 12 GiB server" ||
  bad "default far memory against a 12 GiB server: $out"
start_tcp_server small --capacity 64M --token-file "$tmp/token"  # a client with a token needs the server to prove it
FARMEM_BACKEND=tcp://127.0.0.1:$PORT timeout 60 "$BENCH" --working-set 256M --local-mem 25% --ops 1000 \
  >/dev/null 2>"$tmp/cap.err"
rc=$?
if [[ $rc -ne 0 && $rc -ne 124 && $(wc -l <"$tmp/cap.err") -eq 1 ]] &&
   grep -q "far memory is full: the memory server tcp://127.0.0.1:$PORT refused a page: the server is full: 64 MiB of 64 MiB" "$tmp/cap.err"; then
  ok "server full: $(cat "$tmp/cap.err")"
else bad "server full: rc=$rc $(cat "$tmp/cap.err")"; fi
kill -9 "$SPID"
FARMEM_BACKEND=tcp://127.0.0.1:1 timeout 30 "$BENCH" --working-set 64M --ops 1000 >/dev/null 2>"$tmp/nc.err"
rc=$?
if [[ $rc -ne 0 ]] && grep -q "cannot connect to the memory server tcp://127.0.0.1:1" "$tmp/nc.err"; then ok "no server: $(cat "$tmp/nc.err")"
else bad "no server: rc=$rc $(cat "$tmp/nc.err")"; fi
# A server that requires no token cannot prove it holds ours: refused, with a line saying so.
start_tcp_server open --capacity 64M
FARMEM_BACKEND=tcp://127.0.0.1:$PORT timeout 30 "$BENCH" --working-set 64M --ops 1000 >/dev/null 2>"$tmp/imp.err"
rc=$?
if [[ $rc -ne 0 && $(wc -l <"$tmp/imp.err") -eq 1 ]] &&
   grep -q "the memory server tcp://127.0.0.1:$PORT requires no token, so it cannot prove it holds ours; start it with --token-file" "$tmp/imp.err"; then
  ok "a server without our token: $(cat "$tmp/imp.err")"
else bad "a server without our token: rc=$rc $(cat "$tmp/imp.err")"; fi
kill -9 "$SPID"

# 6. A client killed mid-run leaves the server healthy and its memory reclaimed.
FARMEM_BACKEND=$URI FARMEM_FAR_MEM=1G "$BENCH" --working-set 512M --local-mem 10% --ops 100000000 --no-verify >/dev/null 2>&1 &
victim=$!
sleep 3
during=$(usage_line "$MAIN" "$tmp/main.out")
kill -9 "$victim"; wait "$victim" 2>/dev/null
sleep 1
after=$(usage_line "$MAIN" "$tmp/main.out")
if grep -q '"clients":[1-9]' <<<"$during" && grep -q '"used_bytes":[1-9]' <<<"$during" &&
   grep -q '"clients":0,.*"used_bytes":0,"granted_bytes":0' <<<"$after"; then
  ok "killed client reclaimed (during: $during; after: $after)"
else bad "killed client: during=$during after=$after"; fi
out=$(FARMEM_BACKEND=$URI FARMEM_FAR_MEM=1G timeout 120 "$BENCH" --working-set 256M --ops 50000 --json 2>&1)
grep -q '"verified":true' <<<"$out" && ok "server still serves after the client died" || bad "after client death: $out"

# 7. The server killed mid-run: the client ends non-zero with a message within 15 s.
start_tcp_server doomed --capacity 2G --token-file "$tmp/token"
FARMEM_BACKEND=tcp://127.0.0.1:$PORT FARMEM_FAR_MEM=1G "$BENCH" --working-set 512M --local-mem 10% \
  --ops 100000000 --no-verify >/dev/null 2>"$tmp/k.err" &
client=$!
sleep 3
kill -9 "$SPID"
start=$(date +%s)
timeout 20 tail --pid="$client" -f /dev/null
wait "$client"; rc=$?
took=$(( $(date +%s) - start ))
if [[ $rc -ne 0 && $took -le 15 ]] && grep -q "lost the memory server tcp://127.0.0.1:$PORT" "$tmp/k.err"; then
  ok "server killed: client exit $rc after ${took}s: $(head -1 "$tmp/k.err")"
else bad "server killed: rc=$rc took=${took}s $(cat "$tmp/k.err")"; kill -9 "$client" 2>/dev/null; fi

# 8. SIGTERM ends the server cleanly.
kill -TERM "$MAIN"
wait "$MAIN"; rc=$?
if [[ $rc -eq 0 ]] && grep -q '"farmem_server":"exit"' "$tmp/main.out"; then ok "SIGTERM: clean exit"
else bad "SIGTERM: rc=$rc"; fi

echo "$fails failure(s)"
[[ $fails -eq 0 ]]
