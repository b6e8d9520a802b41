# bench/swap_env.sh -- sourced (not run) by swap_compare.sh and apps_compare.sh.
#
# Linux swap to zram inside a memory cgroup: a temporary zram swap device
# (a free one reused, else hot-added) and a temporary memory cgroup (cgroup v2
# with the memory controller, else a v1 memory hierarchy). Root only.
#
#   swapenv_zram_setup SIZE_BYTES      sets ZRAM_DEV, ZRAM_ALG
#   swapenv_file_setup DIR SIZE_BYTES  a swap file in DIR instead (sets SWAP_FILE)
#   swapenv_cgroup_setup NAME LIMIT    sets CG_DIR, CG_VER
#   swapenv_cgroup_limit BYTES         changes the limit (the cgroup should be empty)
#   cg_reset_peak / cg_peak / cg_oom_kills / pswpout
#   swapenv_teardown                   kills what is left in the cgroup, removes it,
#                                      swapoff + reset (+ hot_remove) the zram device,
#                                      swapoff + remove the swap file
#
# The caller traps EXIT/INT/TERM and calls swapenv_teardown from its handler.
# Uses the caller's PROG, die, warn, log and human if defined.

: "${PROG:=${0##*/}}"
SWAP_PRIO=${SWAP_PRIO:-32767}
declare -F die >/dev/null  || die()  { echo "$PROG: error: $*" >&2; exit 2; }
declare -F warn >/dev/null || warn() { echo "$PROG: WARNING: $*" >&2; }
declare -F log >/dev/null  || log()  { echo "$PROG: $*" >&2; }
declare -F human >/dev/null || human() { awk -v b="$1" 'BEGIN{ split("B KiB MiB GiB TiB",u," "); i=1; while (b>=1024 && i<5) {b/=1024; i++}; printf "%.2f %s", b, u[i] }'; }

# --- state for teardown ----------------------------------------------------------
ZRAM_DEV=""            # e.g. zram1
ZRAM_ALG=""
ZRAM_ADDED=0           # we hot_added it -> hot_remove on exit
ZRAM_OLD_ALG=""        # comp_algorithm before we touched it (restored after reset)
ZRAM_INITED=0          # we set disksize -> reset on exit
ZRAM_SWAPON=0
DEVNODE_MADE=""        # /dev/zramN we mknod'ed (no udev)
CG_DIR=""
CG_VER=""
CG2_ENABLED_AT=""      # cgroup2 subtree_control file where we enabled +memory
SWAP_FILE=""           # a swap file we made (swapenv_file_setup)
SWAP_FILE_ON=0

swapenv_teardown() {
    # 1) anything left in our cgroup (only our own processes), then the cgroup
    if [[ -n $CG_DIR && -d $CG_DIR ]]; then
        local procs pid
        for _ in $(seq 50); do
            procs=$(cat "$CG_DIR/cgroup.procs" 2>/dev/null)
            [[ -z $procs ]] && break
            for pid in $procs; do kill -KILL "$pid" 2>/dev/null; done
            sleep 0.1
        done
        rmdir "$CG_DIR" 2>/dev/null || { sleep 0.5; rmdir "$CG_DIR" 2>/dev/null; } \
            || warn "could not remove cgroup $CG_DIR"
    fi
    if [[ -n $CG2_ENABLED_AT ]]; then
        echo "-memory" >"$CG2_ENABLED_AT" 2>/dev/null
    fi
    # 2) swap off + remove the swap file, swap off + reset the zram device
    if [[ -n $SWAP_FILE ]]; then
        (( SWAP_FILE_ON )) && { swapoff "$SWAP_FILE" 2>/dev/null || warn "swapoff $SWAP_FILE failed"; }
        rm -f "$SWAP_FILE"
    fi
    if [[ -n $ZRAM_DEV ]]; then
        if (( ZRAM_SWAPON )) || grep -q "^/dev/${ZRAM_DEV}[[:space:]]" /proc/swaps; then
            swapoff "/dev/$ZRAM_DEV" 2>/dev/null || warn "swapoff /dev/$ZRAM_DEV failed"
        fi
        if (( ZRAM_INITED )) || [[ $(cat "/sys/block/$ZRAM_DEV/initstate" 2>/dev/null) == 1 ]]; then
            echo 1 >"/sys/block/$ZRAM_DEV/reset" 2>/dev/null || warn "reset of $ZRAM_DEV failed"
        fi
        if (( ! ZRAM_ADDED )) && [[ -n $ZRAM_OLD_ALG ]]; then
            local cur
            cur=$(sed -n 's/.*\[\([^]]*\)\].*/\1/p' "/sys/block/$ZRAM_DEV/comp_algorithm" 2>/dev/null)
            [[ $cur != "$ZRAM_OLD_ALG" ]] && echo "$ZRAM_OLD_ALG" >"/sys/block/$ZRAM_DEV/comp_algorithm" 2>/dev/null
        fi
        [[ -n $DEVNODE_MADE ]] && rm -f "$DEVNODE_MADE"
        if (( ZRAM_ADDED )); then
            echo "${ZRAM_DEV#zram}" >/sys/class/zram-control/hot_remove 2>/dev/null \
                || warn "hot_remove of $ZRAM_DEV failed"
        fi
    fi
    return 0
}

# --- zram device ----------------------------------------------------------------
swapenv_zram_is_free() {  # $1 = zramN
    local d=$1
    [[ -e /sys/block/$d/initstate ]] || return 1
    [[ $(cat "/sys/block/$d/initstate") == 0 ]] || return 1
    grep -q "^/dev/${d}[[:space:]]" /proc/swaps && return 1
    grep -q "^/dev/${d}[[:space:]]" /proc/mounts && return 1
    [[ -z $(ls -A "/sys/block/$d/holders" 2>/dev/null) ]] || return 1
    return 0
}

swapenv_zram_setup() {  # $1 = disksize in bytes
    local size=$1 d id algs a
    for t in mkswap swapon swapoff; do command -v "$t" >/dev/null || die "'$t' not found (install util-linux)"; done
    [[ -d /sys/class/zram-control || -e /sys/block/zram0 ]] || die "zram not available (load it: modprobe zram)"
    if [[ $(wc -l </proc/swaps) -gt 1 ]]; then
        warn "swap already active before this run (left untouched; our zram gets priority $SWAP_PRIO):"
        tail -n +2 /proc/swaps >&2
    fi
    for d in /sys/block/zram*; do
        [[ -e $d ]] || continue
        if swapenv_zram_is_free "${d##*/}"; then ZRAM_DEV=${d##*/}; break; fi
    done
    if [[ -z $ZRAM_DEV ]]; then
        [[ -w /sys/class/zram-control/hot_add ]] || die "no free zram device and no /sys/class/zram-control/hot_add"
        id=$(cat /sys/class/zram-control/hot_add) || die "zram hot_add failed"
        ZRAM_DEV=zram$id; ZRAM_ADDED=1
    fi
    local zsys=/sys/block/$ZRAM_DEV
    algs=$(tr -d '[]' <"$zsys/comp_algorithm")
    ZRAM_OLD_ALG=$(sed -n 's/.*\[\([^]]*\)\].*/\1/p' "$zsys/comp_algorithm")
    ZRAM_ALG=""
    for a in lz4 lzo-rle lzo zstd; do
        if [[ " $algs " == *" $a "* ]]; then ZRAM_ALG=$a; break; fi
    done
    [[ -n $ZRAM_ALG ]] || ZRAM_ALG=$ZRAM_OLD_ALG
    [[ $ZRAM_ALG == "$ZRAM_OLD_ALG" ]] || echo "$ZRAM_ALG" >"$zsys/comp_algorithm" \
        || die "cannot set comp_algorithm=$ZRAM_ALG on $ZRAM_DEV"
    ZRAM_INITED=1
    echo "$size" >"$zsys/disksize" || die "cannot set disksize on $ZRAM_DEV"
    if [[ ! -b /dev/$ZRAM_DEV ]]; then
        for _ in $(seq 20); do [[ -b /dev/$ZRAM_DEV ]] && break; sleep 0.1; done   # give udev a moment
        if [[ ! -b /dev/$ZRAM_DEV ]]; then
            local maj min
            IFS=: read -r maj min <"$zsys/dev"
            mknod "/dev/$ZRAM_DEV" b "$maj" "$min" || die "cannot create /dev/$ZRAM_DEV"
            DEVNODE_MADE=/dev/$ZRAM_DEV
        fi
    fi
    mkswap -q "/dev/$ZRAM_DEV" >/dev/null || die "mkswap /dev/$ZRAM_DEV failed"
    ZRAM_SWAPON=1
    swapon -p "$SWAP_PRIO" "/dev/$ZRAM_DEV" || { ZRAM_SWAPON=0; die "swapon /dev/$ZRAM_DEV failed"; }
    log "zram swap: /dev/$ZRAM_DEV ($ZRAM_ALG, $(human "$size"), prio $SWAP_PRIO, $( ((ZRAM_ADDED)) && echo hot-added || echo reused)), vm.page-cluster=$(cat /proc/sys/vm/page-cluster) (left as is)"
}

# --- a swap file ----------------------------------------------------------------
swapenv_file_setup() {  # $1 = directory, $2 = size in bytes
    local dir=$1 size=$2
    for t in mkswap swapon swapoff fallocate; do command -v "$t" >/dev/null || die "'$t' not found (install util-linux)"; done
    [[ -d $dir && -w $dir ]] || die "swap file directory $dir does not exist or is not writable"
    if [[ $(wc -l </proc/swaps) -gt 1 ]]; then
        warn "swap already active before this run (left untouched; our swap file gets priority $SWAP_PRIO):"
        tail -n +2 /proc/swaps >&2
    fi
    SWAP_FILE=$dir/farmem-swapcmp-$$.swap
    # A swap file must have no holes: allocate it whole.
    fallocate -l "$size" "$SWAP_FILE" || die "cannot allocate a $(human "$size") swap file in $dir (disk full?)"
    chmod 600 "$SWAP_FILE"
    mkswap -q "$SWAP_FILE" >/dev/null || die "mkswap $SWAP_FILE failed"
    SWAP_FILE_ON=1
    swapon -p "$SWAP_PRIO" "$SWAP_FILE" || { SWAP_FILE_ON=0; die "swapon $SWAP_FILE failed (file system $(findmnt -no FSTYPE -T "$dir"))"; }
    log "swap file: $SWAP_FILE ($(human "$size"), $(findmnt -no SOURCE,FSTYPE -T "$dir"), prio $SWAP_PRIO), vm.page-cluster=$(cat /proc/sys/vm/page-cluster) (left as is)"
}

# --- memory cgroup --------------------------------------------------------------
swapenv_cgroup_setup() {  # $1 = name, $2 = limit in bytes
    local name=$1 limit=$2 cg2_mnt cg1_mnt self_cg parent sw
    cg2_mnt=$(awk '$3=="cgroup2"{print $2; exit}' /proc/mounts)
    cg1_mnt=$(awk '$3=="cgroup" && $4 ~ /(^|,)memory(,|$)/ {print $2; exit}' /proc/mounts)
    if [[ -n $cg2_mnt ]] && grep -qw memory "$cg2_mnt/cgroup.controllers" 2>/dev/null; then
        # v2: create directly under the hierarchy root (the root is exempt from the
        # no-internal-processes rule, so enabling +memory there is always allowed).
        CG_VER=2
        if ! grep -qw memory "$cg2_mnt/cgroup.subtree_control"; then
            echo "+memory" >"$cg2_mnt/cgroup.subtree_control" || die "cannot enable memory controller in $cg2_mnt"
            CG2_ENABLED_AT=$cg2_mnt/cgroup.subtree_control
        fi
        CG_DIR=$cg2_mnt/$name
        mkdir "$CG_DIR" || { CG_DIR=""; die "cannot create cgroup $cg2_mnt/$name"; }
        echo "$limit" >"$CG_DIR/memory.max" || die "cannot set memory.max"
        [[ -e $CG_DIR/memory.swap.max ]] && echo max >"$CG_DIR/memory.swap.max"
        if [[ -e $CG_DIR/memory.zswap.max ]]; then  # pure swap-to-zram, no zswap in front
            echo 0 >"$CG_DIR/memory.zswap.max" 2>/dev/null || true
        fi
        sw=$(cat /proc/sys/vm/swappiness)
        (( sw >= 60 )) || warn "vm.swappiness=$sw (cgroup v2 has no per-cgroup swappiness); low values may favour page-cache reclaim"
    elif [[ -n $cg1_mnt ]]; then
        # v1: nest under our own memory cgroup so existing hierarchical limits/accounting still apply.
        CG_VER=1
        self_cg=$(awk -F: '$2 ~ /(^|,)memory(,|$)/ {print $3; exit}' /proc/self/cgroup)
        parent=$cg1_mnt${self_cg:-}
        [[ -d $parent ]] || parent=$cg1_mnt
        CG_DIR=$parent/$name
        CG_DIR=${CG_DIR//\/\//\/}
        mkdir "$CG_DIR" || { CG_DIR=""; die "cannot create cgroup $parent/$name"; }
        echo "$limit" >"$CG_DIR/memory.limit_in_bytes" || die "cannot set memory.limit_in_bytes"
        if [[ -e $CG_DIR/memory.memsw.limit_in_bytes ]]; then
            echo -1 >"$CG_DIR/memory.memsw.limit_in_bytes" 2>/dev/null || true   # unlimited (default)
        fi
        echo 100 >"$CG_DIR/memory.swappiness" 2>/dev/null || warn "cannot set memory.swappiness=100"
    else
        die "no usable memory cgroup (need cgroup2 with the memory controller or a v1 memory hierarchy)"
    fi
}

# New limit; the cgroup should be empty (what is still charged to it is dropped first).
swapenv_cgroup_limit() {  # $1 = bytes
    if [[ $CG_VER == 1 ]]; then
        echo 0 >"$CG_DIR/memory.force_empty" 2>/dev/null || true
        echo "$1" >"$CG_DIR/memory.limit_in_bytes" || die "cannot set memory.limit_in_bytes=$1 on $CG_DIR"
    else
        echo "$1" >"$CG_DIR/memory.max" || die "cannot set memory.max=$1 on $CG_DIR"
    fi
}

cg_reset_peak() {
    if [[ $CG_VER == 1 ]]; then echo 0 >"$CG_DIR/memory.max_usage_in_bytes" 2>/dev/null || true
    elif [[ -e $CG_DIR/memory.peak ]]; then echo 0 >"$CG_DIR/memory.peak" 2>/dev/null || true; fi
}
cg_peak() {
    if [[ $CG_VER == 1 ]]; then cat "$CG_DIR/memory.max_usage_in_bytes" 2>/dev/null || echo 0
    else cat "$CG_DIR/memory.peak" 2>/dev/null || echo 0; fi
}
# OOM kills in the cgroup so far (a counter; 0 if the kernel does not say)
cg_oom_kills() {
    local n=""
    if [[ $CG_VER == 1 ]]; then n=$(awk '$1=="oom_kill"{print $2}' "$CG_DIR/memory.oom_control" 2>/dev/null)
    else n=$(awk '$1=="oom_kill"{print $2}' "$CG_DIR/memory.events" 2>/dev/null); fi
    echo "${n:-0}"
}
pswpout() { awk '$1=="pswpout"{print $2}' /proc/vmstat; }
