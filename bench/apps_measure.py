#!/usr/bin/env python3
"""bench/apps_measure.py -- runs one program for bench/apps_compare.sh and measures it.

usage: apps_measure.py [--cgroup-procs FILE] [--timeout SEC] [--log FILE]
                       [--driver SHELL_CMD] -- PROGRAM [ARGS...]

Starts PROGRAM in a new session (joining the cgroup first when --cgroup-procs
is given, so every page it touches is charged there), hashes its stdout
(sha256, bytes) and waits for it with os.wait4, which gives the program's own
resource usage: peak resident memory (ru_maxrss, the largest of the program and
the children it waited for) and major/minor faults (summed). With --driver,
PROGRAM is a server: its stdout goes to the log, and the driver (bash -c,
outside the cgroup, without LD_PRELOAD/FARMEM_*) is what is hashed; the driver
must stop the server. Wall time runs from the start to the program's exit.

Prints one tab-separated line: wall_s maxrss_kib majflt minflt exit_code
term_signal timed_out sha256 out_bytes.
"""
import hashlib
import os
import signal
import subprocess
import sys
import threading
import time


def main():
    args = sys.argv[1:]
    cg = None
    timeout = 600.0
    log = os.devnull
    driver = None
    while args and args[0] != "--":
        opt = args.pop(0)
        if not args:
            sys.exit(f"apps_measure.py: {opt} needs a value")
        val = args.pop(0)
        if opt == "--cgroup-procs":
            cg = val
        elif opt == "--timeout":
            timeout = float(val)
        elif opt == "--log":
            log = val
        elif opt == "--driver":
            driver = val
        else:
            sys.exit(f"apps_measure.py: unknown option {opt}")
    if not args or len(args) < 2:
        sys.exit("apps_measure.py: no program (usage: apps_measure.py [options] -- PROGRAM [ARGS...])")
    cmd = args[1:]

    def preexec():
        os.setsid()
        if cg:
            with open(cg, "w") as f:
                f.write(str(os.getpid()))

    groups = []
    timed_out = threading.Event()

    def kill_all(*_):
        for pg in groups:
            try:
                os.killpg(pg, signal.SIGKILL)
            except OSError:
                pass

    def on_term(signum, _frame):
        kill_all()
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)

    h = hashlib.sha256()
    nbytes = [0]

    def reader(stream):
        while True:
            b = stream.read(1 << 20)
            if not b:
                break
            h.update(b)
            nbytes[0] += len(b)

    logf = open(log, "wb")
    t0 = time.monotonic()
    if driver is None:
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=logf,
                             preexec_fn=preexec)
        groups.append(p.pid)
        rd = threading.Thread(target=reader, args=(p.stdout,), daemon=True)
        rd.start()
    else:
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, preexec_fn=preexec)
        groups.append(p.pid)
        env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD" and not k.startswith("FARMEM_")}
        d = subprocess.Popen(["bash", "-c", driver], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=logf, env=env, start_new_session=True)
        groups.append(d.pid)
        rd = threading.Thread(target=reader, args=(d.stdout,), daemon=True)
        rd.start()

    def on_timeout():
        timed_out.set()
        kill_all()

    timer = threading.Timer(timeout, on_timeout)
    timer.daemon = True
    timer.start()
    while True:
        try:
            _, status, ru = os.wait4(p.pid, 0)
            break
        except InterruptedError:
            continue
    wall = time.monotonic() - t0
    if driver is not None:
        try:
            d.wait(timeout=max(1.0, timeout - wall))
        except subprocess.TimeoutExpired:
            kill_all()
            d.wait()
    timer.cancel()
    rd.join(timeout=30)
    # the program's session may have left something behind (e.g. a server it spawned)
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except OSError:
        pass
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -1
    sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0
    print("\t".join(str(x) for x in (f"{wall:.3f}", ru.ru_maxrss, ru.ru_majflt, ru.ru_minflt, code, sig,
                                     int(timed_out.is_set()), h.hexdigest(), nbytes[0])))


if __name__ == "__main__":
    main()
