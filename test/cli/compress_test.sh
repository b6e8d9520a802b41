#!/usr/bin/env bash
# The compressed tier end to end (FARMEM_COMPRESS, farmem-run --compress): a far
# array of log-like pages over tcp:// to a real farmem-server whose memory
# follows the compressed size, a pool whose servers' copies are compressed,
# compaction giving the holes back after frees, an unmodified program with byte-identical output, and one-line errors for a bad codec.
set -uo pipefail
BENCH=$1
SERVER=$2
RUN=${3:-}
source "$(dirname "${BASH_SOURCE[0]}")/harness.sh"

# 1. Over tcp://: verified, and the server holds well under the data it was given.
start_tcp_server server --capacity 1G
rss0=$(awk '/^VmRSS/ {print $2}' "/proc/$SPID/status")
out=$(FARMEM_COMPRESS=lz4 FARMEM_BACKEND=tcp://127.0.0.1:$PORT FARMEM_FAR_MEM=256M FARMEM_STATS=1 timeout 120 \
      "$BENCH" --working-set 96M --local-mem 12M --data text --ops 40000 --uthreads 16 --json 2>"$tmp/e1")
hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$SPID/status")
stats=$(grep -o '"compress":{[^}]*}' "$tmp/e1")
held=$(( (hwm - rss0) / 1024 ))
if grep -q '"verified":true' <<<"$out" && grep -q '"raw_pages":0,' <<<"$stats" && ((held > 8 && held < 62)); then
  ok "96 MiB of text pages over tcp with lz4 verified; the server held $held MiB at most ($stats)"
else bad "lz4 over tcp: server held $held MiB; $out $(tail -3 "$tmp/e1")"; fi

# 2. Bad codecs and combinations: one line naming the setting, non-zero exit.
expect_error "unknown codec" "FARMEM_COMPRESS=gzip: unknown codec; use none, lz4, zstd or zstd:LEVEL" \
  env FARMEM_COMPRESS=gzip "$BENCH" --working-set 16M --ops 1000
expect_error "bad zstd level" "the zstd level must be 1-" env FARMEM_COMPRESS=zstd:40 "$BENCH" --working-set 16M --ops 1000

# 3. Over a pool (replicas:2 on two servers): each server's copy compressed, verified.
P1=$PORT
start_tcp_server server2 --capacity 1G
out=$(FARMEM_COMPRESS=lz4 FARMEM_BACKEND=tcp://127.0.0.1:$P1,tcp://127.0.0.1:$PORT FARMEM_REDUNDANCY=replicas:2 \
      FARMEM_FAR_MEM=256M FARMEM_STATS=1 timeout 120 \
      "$BENCH" --working-set 48M --local-mem 8M --data text --ops 20000 --json 2>"$tmp/e2")
members=$(grep -o '"compress":{[^}]*}' "$tmp/e2" | grep -c '"raw_pages":0,')
if grep -q '"verified":true' <<<"$out" && ((members == 2)); then
  ok "48 MiB of text pages over a pool of two with replicas:2 and lz4 verified; both servers' copies compressed"
else bad "lz4 over a pool: $members servers compressed; $out $(tail -3 "$tmp/e2")"; fi

# 4. Compaction: after three pages in four are freed, the embedded server gives
#    the holes back (its resident memory falls), every kept page exact; with
#    FARMEM_COMPACT=0 it keeps them (so the check can fail).
COMPACT=$(dirname "$BENCH")/farmem-compact-bench
for pct in 0 20; do
  out=$(FARMEM_COMPACT=$pct timeout 120 "$COMPACT" --far 48M --wait 3 2>&1)
  after=$(grep -o '"stored_after_wait":[0-9]*' <<<"$out" | cut -d: -f2)
  freed=$(grep -o '"stored_after_free":[0-9]*' <<<"$out" | cut -d: -f2)
  rss0=$(grep -o '"server_rss_after_fill":[0-9]*' <<<"$out" | cut -d: -f2)
  rss1=$(grep -o '"server_rss_after_wait":[0-9]*' <<<"$out" | cut -d: -f2)
  if ! grep -q '"verified":true' <<<"$out" || [[ -z $after || -z $freed ]]; then bad "compaction $pct: $out"
  elif ((pct == 0 && after * 10 > freed * 9)); then ok "FARMEM_COMPACT=0: the server keeps its holes ($after of $freed bytes)"
  elif ((pct > 0 && after * 2 < freed && rss1 * 3 < rss0 * 2)); then
    ok "compaction: the server holds $after of $freed bytes, resident $((rss1 >> 20)) of $((rss0 >> 20)) MiB, every kept page exact"
  else bad "compaction $pct: $out"; fi
done

# 5. An unmodified program under farmem-run --compress: the same output as without.
if [[ -n $RUN ]]; then
  cat >"$tmp/prog.py" <<'PY'
d = {}
for i in range(120000):
    d["key%d" % i] = "value number %d of the dictionary" % (i * 7)
print(len(d), sum(len(v) for v in d.values()), d["key65432"])
PY
  want=$(/usr/bin/python3 "$tmp/prog.py")
  for codec in lz4 zstd:3; do
    got=$(timeout 120 "$RUN" --local-mem 16M --compress "$codec" --stats -- /usr/bin/python3 "$tmp/prog.py" 2>"$tmp/e3")
    st=$(grep -o '"compress":{[^}]*}' "$tmp/e3")
    if [[ $got == "$want" ]] && grep -q '"writes":[1-9]' <<<"$st"; then ok "python3 under farmem-run --compress $codec: same output ($st)"
    else bad "python3 under --compress $codec: '$got' vs '$want'; $(tail -3 "$tmp/e3")"; fi
  done
  expect_error "farmem-run names its option" "^farmem-run: --compress lz5: unknown codec" \
    "$RUN" --compress lz5 -- true
fi

((fails == 0))
