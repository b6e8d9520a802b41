#!/usr/bin/env bash
# Shared set-up for ./run.sh and ./test.sh: installs the Debian packages that are
# missing (only those), then configures and builds BUILD_DIR (default: build).
# Running it again redoes nothing that is already done.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(meson ninja-build g++ pkg-config cmake python3 procps sqlite3 openssl
          libboost-context-dev libmimalloc-dev catch2 libisal-dev
          libibverbs-dev librdmacm-dev libdpdk-dev
          memcached libmemcached-tools python3-pymemcache
          liblz4-dev libzstd-dev libssl-dev liburing-dev libhiredis-dev redis-server redis-tools)

# bench/plot.py's figures: scripts/setup.sh --plot (and ./test.sh, whose plot test draws one).
[[ " $* " == *" --plot "* || -n ${FARMEM_SETUP_PLOT:-} ]] && PACKAGES+=(python3-matplotlib)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "==> installing missing Debian packages: ${missing[*]}"
  SUDO=()
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || { echo "error: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
    SUDO=(sudo)
  fi
  export DEBIAN_FRONTEND=noninteractive
  "${SUDO[@]}" apt-get update -qq
  "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# build_tree DIR [meson options...]: configure once, then build incrementally.
build_tree() {
  local dir=$1
  shift
  if [[ ! -f $dir/build.ninja ]]; then
    echo "==> configuring $dir $*"
    meson setup "$dir" "$@" >/dev/null
  fi
  echo "==> building $dir"
  ninja -C "$dir" >/dev/null
}

build_tree "${BUILD_DIR:-build}" --buildtype=release
