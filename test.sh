#!/usr/bin/env bash
# Every test: install what is missing, build, run the suite in the release
# build, then again under ThreadSanitizer and AddressSanitizer+UBSan (smaller
# sizes). ./test.sh --quick skips the sanitizer builds.
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh --plot  # --plot: python3-matplotlib, for the plot test
echo "==> tests (release build)"
meson test -C build --print-errorlogs
[[ ${1:-} == --quick ]] && exit 0

source_tree_build() {  # DIR SANITIZER
  if [[ ! -f $1/build.ninja ]]; then
    echo "==> configuring $1 (-Db_sanitize=$2)"
    meson setup "$1" --buildtype=debugoptimized -Db_sanitize="$2" -Db_lundef=false >/dev/null
  fi
  ninja -C "$1" >/dev/null
}
source_tree_build build-tsan thread
echo "==> tests under ThreadSanitizer"
TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 suppressions=$PWD/test/tsan.supp" meson test -C build-tsan --print-errorlogs --suite unit --suite far
source_tree_build build-asan address,undefined
echo "==> tests under AddressSanitizer + UBSan"
ASAN_OPTIONS="halt_on_error=1 detect_leaks=0" UBSAN_OPTIONS="halt_on_error=1 print_stacktrace=1" \
  meson test -C build-asan --print-errorlogs --suite unit --suite far
echo "==> all tests passed"
