#!/usr/bin/env bash
# End to end on the file:// transport (an SSD tier): a working set four times
# the local budget verified through far pointers (64 uthreads) and through the
# transparent region, the file gone at exit, file:// as pool members (replicas,
# and ec:2+1 whose 2 KiB pieces are smaller than a page), and one line and a
# non-zero exit for each problem: a missing directory, an existing file, a
# read-only file system, a file system without O_DIRECT (ramfs), a full disk,
# io_uring refused, a block device smaller than far memory. The read-only,
# ramfs, full-disk and device cases mount in a private mount namespace (root).
set -uo pipefail
BENCH=$1
NO_URING=$2
DISK_DIR=$3  # a directory on a real disk (the build directory)
source "$(dirname "${BASH_SOURCE[0]}")/harness.sh"
disk=$(mktemp -d "$DISK_DIR/file-test.XXXXXX")
trap 'cleanup; rm -rf "$disk"' EXIT

small=(--working-set 32M --local-mem 8M --ops 4000 --json)

# 1. Far pointers, 64 uthreads, 4x the local budget, verified; nothing left behind.
out=$(FARMEM_FAR_MEM=64M FARMEM_STATS=1 timeout 120 "$BENCH" --backend "file://$disk" "${small[@]}" --uthreads 64 2>"$tmp/e1")
if grep -q '"verified":true' <<<"$out" && grep -q '"evictions":[1-9]' <<<"$out" && grep -q '"file":{' "$tmp/e1" &&
   [[ -z $(ls -A "$disk") ]]; then
  ok "file:// in a directory: 32 MiB at 8 MiB local, 64 uthreads, verified, file removed"
else bad "file:// sw: $out $(cat "$tmp/e1") $(ls -A "$disk")"; fi

# 2. The transparent region over a named new file.
out=$(FARMEM_FAR_MEM=256M FARMEM_HW_MEM=64M timeout 120 "$BENCH" --backend "file://$disk/far.bin" --mode hw "${small[@]}" 2>"$tmp/e2")
if grep -q '"verified":true' <<<"$out" && grep -q '"evictions":[1-9]' <<<"$out" && [[ ! -e $disk/far.bin ]]; then
  ok "file:// under the transparent region (hw) verified, far.bin removed"
else bad "file:// hw: $out $(cat "$tmp/e2")"; fi

# 3. Pool members: two replicas, and erasure coding with 2 KiB pieces (smaller
#    than a page). Each page is two or three transfers: a smaller working set.
mkdir -p "$disk"/{a,b,c}
for r in "replicas:2 file://$disk/a,file://$disk/b" "ec:2+1 file://$disk/a,file://$disk/b,file://$disk/c"; do
  scheme=${r%% *}
  out=$(FARMEM_REDUNDANCY=$scheme FARMEM_FAR_MEM=64M timeout 120 "$BENCH" --backend "${r#* }" --working-set 16M \
        --local-mem 8M --ops 2000 --json --uthreads 64 2>"$tmp/e3")
  if grep -q '"verified":true' <<<"$out" && grep -q '"evictions":[1-9]' <<<"$out"; then
    ok "file:// pool members, $scheme, verified"
  else bad "file:// pool $scheme: $out $(cat "$tmp/e3")"; fi
done

# expect_line NAME PATTERN CMD...: CMD fails with one line on stderr matching PATTERN.
expect_line() {
  local name=$1 pattern=$2
  shift 2
  "$@" >"$tmp/out" 2>"$tmp/err"
  local rc=$? lines
  lines=$(grep -c . "$tmp/err")
  if [[ $rc -ne 0 && $rc -ne 124 && $lines -eq 1 ]] && grep -q -- "$pattern" "$tmp/err"; then
    ok "$name: $(cat "$tmp/err")"
  else bad "$name (exit $rc, $lines lines): $(cat "$tmp/err")"; fi
}
run_small() { FARMEM_FAR_MEM=64M timeout 60 "$BENCH" "${small[@]}" "$@"; }

expect_line "a missing directory" "the directory $disk/nope does not exist; create it" \
  run_small --backend "file://$disk/nope/far.bin"
touch "$disk/exists"
expect_line "an existing file" "already exists" run_small --backend "file://$disk/exists"
expect_line "io_uring refused (EPERM)" "io_uring is not available here.*kernel.io_uring_disabled" \
  timeout 60 "$NO_URING" 1 "$BENCH" --backend "file://$disk" "${small[@]}"
expect_line "io_uring missing (ENOSYS)" "io_uring is not available here" \
  timeout 60 "$NO_URING" 38 "$BENCH" --backend "file://$disk" "${small[@]}"

if [[ $(id -u) -ne 0 ]] || ! unshare -m true 2>/dev/null; then
  echo "skip read-only, ramfs, full-disk and device cases: they need root and mount namespaces"
  exit $((fails > 0))
fi
export BENCH disk
ns() { timeout 60 unshare -m bash -c "$1"; }  # a private mount namespace: nothing shows outside
mnt=$disk/mnt
mkdir -p "$mnt"
expect_line "a read-only file system" "read-only" \
  ns 'mount --bind "$disk/a" "$disk/mnt" && mount -o remount,bind,ro "$disk/mnt" &&
      FARMEM_FAR_MEM=64M "$BENCH" --working-set 32M --local-mem 8M --json --backend "file://$disk/mnt"'
expect_line "a file system without O_DIRECT (ramfs)" "does not support O_DIRECT" \
  ns 'mount -t ramfs none "$disk/mnt" &&
      FARMEM_FAR_MEM=64M "$BENCH" --working-set 32M --local-mem 8M --json --backend "file://$disk/mnt"'
expect_line "a full disk" "far memory is full: the disk under $mnt is full" \
  ns 'mount -t tmpfs -o size=4m none "$disk/mnt" &&
      FARMEM_FAR_MEM=64M "$BENCH" --working-set 32M --local-mem 8M --ops 1000 --json --backend "file://$disk/mnt"'

# A block device: a loop device over a 40 MiB file (skipped where none can be made).
truncate -s 40M "$disk/dev.img"
if loop=$(losetup --find --show "$disk/dev.img" 2>/dev/null); then
  expect_line "a device smaller than far memory" "holds 40 MiB but far memory needs 64 MiB" \
    run_small --backend "file://$loop"
  out=$(FARMEM_FAR_MEM=40M timeout 120 "$BENCH" --backend "file://$loop" --working-set 16M --local-mem 8M --ops 2000 \
        --json --uthreads 64 2>"$tmp/e4")
  if grep -q '"verified":true' <<<"$out" && [[ -b $loop ]]; then
    ok "file:// on a block device ($loop) verified, device kept"
  else bad "file:// device: $out $(cat "$tmp/e4")"; fi
  losetup -d "$loop"
else
  echo "skip block device cases: no loop device here"
fi
exit $((fails > 0))
