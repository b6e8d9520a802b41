#!/usr/bin/python3
# A man in the middle for the tcp:// wire protocol (test/cli/protect_test.sh):
# listens on a free port (written to PORT_FILE), relays every connection to
# the farmem-server at TARGET_PORT, and appends every message, both ways, to
# RECORD. MODE:
#   record   relay as it is
#   flip     flip one bit in every page the server sends back
#   replay   send back the previous version a client wrote to that offset
#            instead of the newest (a replayed page)
#   swap     send back the newest version the client wrote to another offset
#            (another page's bytes: a moved page)
# It knows only the framing (40-byte header, then `length` bytes). For
# tcp+tls://, whose framing it cannot see, two modes work on the bytes:
#   bytes    relay and record the bytes as they are
#   flipbyte flip one bit of the server's bytes once 1 MiB has passed
#            (past the handshake, inside a page)
import socket, struct, sys, threading

port_file, target, mode, record = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
HDR = struct.Struct("<IHHQQIIII")
WRITE, REPLY = 3, 16
lock = threading.Lock()
written = {}  # offset -> payloads the client wrote there, oldest first
rec = open(record, "ab", buffering=0)
tampered = 0


def recv_exact(s, n):
    b = bytearray()
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            return None
        b += c
    return bytes(b)


def close_both(*socks):
    for s in socks:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def flipped(payload):
    p = bytearray(payload)
    p[len(p) // 2] ^= 0x10
    return bytes(p)


def pump(src, dst, to_server):
    global tampered
    try:
        while True:
            h = recv_exact(src, HDR.size)
            if h is None:
                break
            _, _, op, _, off, size, length, _, _ = HDR.unpack(h)
            payload = recv_exact(src, length) if length else b""
            if payload is None:
                break
            with lock:
                rec.write(h + payload)
                if to_server and op == WRITE:
                    written.setdefault(off, []).append(payload)
                elif not to_server and op == REPLY and length == size and length > 0:
                    if mode == "flip":
                        payload = flipped(payload)
                        tampered += 1
                    elif mode == "replay" and len(written.get(off, [])) >= 2 and written[off][-2] != payload:
                        payload = written[off][-2]
                        tampered += 1
                    elif mode == "swap":
                        other = next((o for o in written if o != off and len(written[o][-1]) == length
                                      and written[o][-1] != payload), None)
                        if other is not None:
                            payload = written[other][-1]
                            tampered += 1
            dst.sendall(h + payload)
    except OSError:
        pass
    close_both(src, dst)


def pump_bytes(src, dst, to_server):
    global tampered
    passed = 0
    try:
        while True:
            b = src.recv(65536)
            if not b:
                break
            with lock:
                rec.write(b)
            if mode == "flipbyte" and not to_server and tampered == 0 and passed + len(b) > (1 << 20):
                b = flipped(b)
                tampered += 1
            passed += len(b)
            dst.sendall(b)
    except OSError:
        pass
    close_both(src, dst)


def serve(client):
    server = socket.create_connection(("127.0.0.1", target))
    for s in (client, server):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    fn = pump_bytes if mode in ("bytes", "flipbyte") else pump
    threading.Thread(target=fn, args=(client, server, True), daemon=True).start()
    threading.Thread(target=fn, args=(server, client, False), daemon=True).start()


ls = socket.socket()
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("127.0.0.1", 0))
ls.listen(64)
with open(port_file + ".tmp", "w") as f:
    f.write(str(ls.getsockname()[1]))
import os
os.rename(port_file + ".tmp", port_file)
while True:
    c, _ = ls.accept()
    serve(c)
