# Sourced by the end-to-end cli tests: a scratch directory ($tmp), background
# processes to kill at exit (append their pids to pids), and ok/bad lines with
# a failure count ($fails) for the script's exit status.
fails=0
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done; rm -rf "$tmp"; }
trap cleanup EXIT
ok() { echo "ok   $*"; }
bad() { echo "FAIL $*"; fails=$((fails + 1)); }
