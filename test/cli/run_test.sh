#!/usr/bin/env bash
# farmem-run behaves like the program it runs: Ctrl-C to the process group,
# SIGTERM and timeout end the program the way they would without farmem and
# leave no process behind; a wrapper script that execs the program gives one
# runtime and one session; an unprivileged user gets either working system
# calls on far memory or the one line that names the fix; the README example
# starts at once.
# Usage: run_test.sh FARMEM_RUN FARMEM_SERVER SYSCALL_CHECK README_EXAMPLE
set -uo pipefail
RUN=$1 SERVER=$2 SYSCALL=$3 EXAMPLE=$4
PY=/usr/bin/python3
source "$(dirname "$0")/harness.sh"
chmod 755 "$tmp"

# The embedded memory server started by the program with pid $1 (empty if none).
server_of() { pgrep -P "$1" -f 'farmem-server --shm-fd' | head -1; }
gone_within() {  # PID SECONDS
  for _ in $(seq $(($2 * 10))); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
  return 1
}

# A python program that sends pages far (so its server runs), says so, waits.
cat >"$tmp/hold.py" <<'PY'
import sys, time
blocks = [bytearray(b"x" * (1 << 20)) for _ in range(64)]
print("ready", flush=True)
time.sleep(120)
PY
# start_held NAME: python3 under farmem-run in its own process group; sets held, srv.
start_held() {
  # A shell without job control starts background commands with SIGINT ignored;
  # a terminal's foreground program has it at its default.
  setsid env --default-signal=INT "$RUN" --local-mem 16M -- "$PY" "$tmp/hold.py" >"$tmp/$1.out" 2>"$tmp/$1.err" &
  held=$!
  pids+=("$held")
  for _ in $(seq 300); do grep -q ready "$tmp/$1.out" 2>/dev/null && break; sleep 0.1; done
  srv=$(server_of "$held")
}

# 1. Ctrl-C: SIGINT to the whole foreground process group.
start_held ctrlc
if [[ -z $srv ]]; then
  bad "Ctrl-C: no memory server under the program (did nothing go far?)"
else
  kill -INT -- "-$held"
  wait "$held"; rc=$?
  if ((rc == 130)) && grep -q KeyboardInterrupt "$tmp/ctrlc.err" && ! grep -q '^farmem' "$tmp/ctrlc.err" &&
    gone_within "$srv" 5; then
    ok "Ctrl-C to the process group: KeyboardInterrupt, exit 130, memory server $srv gone"
  else
    bad "Ctrl-C: exit $rc, server $srv $(kill -0 "$srv" 2>/dev/null && echo 'still running'), stderr: $(tail -2 "$tmp/ctrlc.err")"
  fi
fi

# 2. SIGTERM to farmem-run's pid (the program: farmem-run execs it).
start_held term
kill -TERM "$held"
wait "$held"; rc=$?
if ((rc == 143)) && [[ -n $srv ]] && gone_within "$srv" 5 && ! kill -0 "$held" 2>/dev/null; then
  ok "SIGTERM to farmem-run: the program ends (exit 143), memory server $srv gone"
else
  bad "SIGTERM: exit $rc, server '${srv}' $(kill -0 "${srv:-0}" 2>/dev/null && echo 'still running')"
fi

# 3. timeout(1).
timeout 3 "$RUN" --local-mem 16M -- "$PY" "$tmp/hold.py" >/dev/null 2>"$tmp/timeout.err"; rc=$?
sleep 0.5
if ((rc == 124)) && ! pgrep -f "hold.py" >/dev/null && ! grep -q '^farmem' "$tmp/timeout.err"; then
  ok "timeout 3 farmem-run ...: exit 124, nothing left running"
else
  bad "timeout: exit $rc, $(pgrep -f hold.py | wc -l) left, stderr: $(tail -1 "$tmp/timeout.err")"
fi

# 4. A wrapper script that runs tools and then execs the real program (as pyenv,
#    nvm and launchers do), against a server with room for one session only.
cat >"$tmp/wrap.sh" <<EOF2
#!/bin/sh
version=\$(echo 3 | cat)
ls / >/dev/null
exec $PY "\$@"
EOF2
chmod +x "$tmp/wrap.sh"
port=$((21000 + RANDOM % 20000))
"$SERVER" --listen "tcp://127.0.0.1:$port" --capacity 1G >"$tmp/server.log" 2>&1 &
pids+=($!)
sleep 0.5
out=$(FARMEM_FAR_MEM=1G FARMEM_HW_MEM=512M timeout 120 "$RUN" --local-mem 16M --backend "tcp://127.0.0.1:$port" --stats -- \
  "$tmp/wrap.sh" -c 'b = [bytearray(b"%d" % (i % 10) * (1 << 20)) for i in range(64)]; print(sum(x[5] for x in b))' \
  2>"$tmp/wrap.err"); rc=$?
nstats=$(grep -c '"farmem_stats"' "$tmp/wrap.err")
npeak=$(grep -c '^farmem-run: peak resident' "$tmp/wrap.err")
want=$("$PY" -c 'print(sum((b"%d" % (i % 10))[0] for i in range(64)))')
if ((rc == 0)) && [[ $out == "$want" ]] && ((nstats == 1 && npeak == 1)) && grep -q '"evictions":[1-9]' "$tmp/wrap.err"; then
  ok "wrapper script that execs python3: one runtime, one session on a one-session server, output $out"
else
  bad "wrapper: exit $rc, output '$out' (want $want), $nstats statistics lines, $npeak peak lines: $(grep -v farmem_stats "$tmp/wrap.err" | tail -2)"
fi

# 5. An unprivileged user.
if (( EUID == 0 )) && command -v setpriv >/dev/null; then
  user=farmem-test
  id "$user" >/dev/null 2>&1 || useradd -r -M -d /nonexistent -s /usr/sbin/nologin "$user" 2>/dev/null
  if id "$user" >/dev/null 2>&1; then
    as_user() { setpriv --reuid="$user" --regid="$user" --clear-groups -- "$@"; }
    mkdir "$tmp/u" && chown "$user" "$tmp/u"
    "$PY" -c 'import random
random.seed(3)
with open("'"$tmp"'/nums.txt", "w") as f:
    for _ in range(300000): f.write("%d\n" % random.getrandbits(40))'
    chmod 644 "$tmp/nums.txt"
    cat >"$tmp/fileio.py" <<'PY'
import hashlib, sys
data = open(sys.argv[1], "rb").read()
rows = sorted(data.split(b"\n"))
open(sys.argv[2], "wb").write(b"\n".join(rows))
print(hashlib.sha256(open(sys.argv[2], "rb").read()).hexdigest())
PY
    sort -n "$tmp/nums.txt" >"$tmp/sorted.plain"
    plain_py=$("$PY" "$tmp/fileio.py" "$tmp/nums.txt" "$tmp/py.plain")
    sysctl_was=$(cat /proc/sys/vm/unprivileged_userfaultfd 2>/dev/null || echo "")
    restore() { [[ -n $sysctl_was ]] && echo "$sysctl_was" >/proc/sys/vm/unprivileged_userfaultfd; }
    for setting in 0 1; do
      if [[ -z $sysctl_was ]] || ! echo "$setting" >/proc/sys/vm/unprivileged_userfaultfd 2>/dev/null; then
        echo "SKIP unprivileged with vm.unprivileged_userfaultfd=$setting: cannot set it here"; continue
      fi
      if ((setting == 0)); then
        err=$(as_user "$RUN" --local-mem 16M -- sort -n "$tmp/nums.txt" 2>&1 >/dev/null); rc=$?
        if ((rc != 0)) && [[ $(wc -l <<<"$err") -eq 1 ]] && grep -q "vm.unprivileged_userfaultfd=1" <<<"$err" &&
          grep -q "/dev/userfaultfd" <<<"$err"; then
          ok "unprivileged, vm.unprivileged_userfaultfd=0: refused at start, exit $rc: '$err'"
        else
          bad "unprivileged, sysctl 0: exit $rc, '$err'"
        fi
        continue
      fi
      as_user "$RUN" --local-mem 16M -- sort -n -S 256M "$tmp/nums.txt" >"$tmp/sorted.far" 2>"$tmp/u.err"; rc=$?
      if ((rc == 0)) && cmp -s "$tmp/sorted.plain" "$tmp/sorted.far"; then
        ok "unprivileged sort (vm.unprivileged_userfaultfd=1): same output as a plain run"
      else
        bad "unprivileged sort: exit $rc, $(tail -1 "$tmp/u.err")"
      fi
      py_far=$(cd "$tmp/u" && as_user "$RUN" --local-mem 16M -- "$PY" "$tmp/fileio.py" "$tmp/nums.txt" "$tmp/u/py.far" 2>"$tmp/u.err"); rc=$?
      if ((rc == 0)) && [[ $py_far == "$plain_py" ]]; then
        ok "unprivileged python3 file I/O: same output as a plain run"
      else
        bad "unprivileged python3 file I/O: exit $rc, '$py_far' vs '$plain_py', $(tail -1 "$tmp/u.err")"
      fi
      out=$(as_user "$RUN" --local-mem 16M -- "$SYSCALL" "$tmp/u/sc.tmp" 48 2>"$tmp/u.err"); rc=$?
      if ((rc == 0)) && [[ $out == "syscall_check: ok" ]]; then
        ok "unprivileged read/write/pread/send/recv on far buffers: every byte right"
      else
        bad "unprivileged syscall_check: exit $rc, '$out', $(tail -1 "$tmp/u.err")"
      fi
    done
    restore
  else
    echo "SKIP unprivileged cases: cannot create user $user"
  fi
else
  echo "SKIP unprivileged cases: needs root (to create the test user) and setpriv"
fi

# 6. The same system calls as root.
out=$("$RUN" --local-mem 16M -- "$SYSCALL" "$tmp/sc.tmp" 48 2>"$tmp/sc.err"); rc=$?
if ((rc == 0)) && [[ $out == "syscall_check: ok" ]]; then
  ok "read/write/pread/send/recv on far buffers: every byte right"
else
  bad "syscall_check: exit $rc, '$out', $(tail -1 "$tmp/sc.err")"
fi

# 7. Start-up: the README example, default settings (a budget of 25% of this
#    machine), starts at once and stays small: the frame pool fills as it is used.
t0=$(date +%s%N)
out=$("$PY" -c 'import resource, subprocess, sys
r = subprocess.run([sys.argv[1]], capture_output=True, text=True)
print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024, r.stdout.strip())' "$EXAMPLE")
ms=$(( ($(date +%s%N) - t0) / 1000000 ))
read -r rc peak text <<<"$out"
if [[ $rc == 0 && $text == "readme_example: 1" ]] && ((peak < 100 && ms < 3000)); then
  ok "README example: ${ms} ms, peak resident ${peak} MiB"
else
  bad "README example: '$out' in ${ms} ms"
fi

# 8. Sizes name what the user typed.
err=$("$RUN" --local-mem 0 -- /bin/true 2>&1); rc=$?
((rc != 0)) && grep -q -- "--local-mem='0'" <<<"$err" && ok "--local-mem 0: '$err'" || bad "--local-mem 0: exit $rc, '$err'"
err=$("$RUN" --local-mem 100T -- /bin/true 2>&1); rc=$?
((rc != 0)) && grep -q -- "lower --local-mem" <<<"$err" && ok "--local-mem 100T: '$err'" || bad "--local-mem 100T: exit $rc, '$err'"
err=$(FARMEM_LOCAL_MEM=0 "$RUN" -- /bin/true 2>&1); rc=$?
((rc != 0)) && grep -q "FARMEM_LOCAL_MEM='0'" <<<"$err" && ok "FARMEM_LOCAL_MEM=0: '$err'" || bad "FARMEM_LOCAL_MEM=0: exit $rc, '$err'"
err=$("$RUN" --backend tcp://127.0.0.1:1 -- /bin/true 2>&1); rc=$?
((rc != 0)) && [[ $(wc -l <<<"$err") -eq 1 ]] && grep -q "fix --backend" <<<"$err" && ok "unreachable --backend refused at start: '$err'" ||
  bad "unreachable --backend: exit $rc, '$err'"

echo "run_test: $fails failure(s)"
exit $((fails > 0))
