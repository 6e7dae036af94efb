#!/usr/bin/env bash
# Cross-builds secchan for aarch64-unknown-linux-gnu and runs it under qemu-aarch64 as a
# Raspberry Pi 4 (-cpu cortex-a72) and a Pi 5 (-cpu cortex-a76).
#
#   scripts/aarch64.sh smoke   build; keygen, fingerprint, demo and bench --ops on both CPUs,
#                              and tests/cli.rs emulated on cortex-a72 (what CI runs)
#   scripts/aarch64.sh test    build; the whole test suite on both CPUs
#   scripts/aarch64.sh count   build; instructions per handshake and per 1 KiB record
#   scripts/aarch64.sh         test, then count
#
# Every emulated run is bounded (AARCH64_TIMEOUT seconds, default 300; a test binary gets
# four times that): a hang, a non-zero exit, a missing binary or an empty or zero count stops
# the script with a message and a non-zero exit.
#
# What it needs it installs from Debian when missing (as root, or with sudo): the cross C
# compiler and C library, qemu-user with qemu-user-binfmt, and, when the rustc on PATH has no
# standard library for the target (`rustup target add aarch64-unknown-linux-gnu` gives one),
# Debian's rustc-web, cargo-web and libstd-rust-web-dev:arm64 after
# `dpkg --add-architecture arm64`; it then builds with Debian's cargo and rustc.
#
# Which C library the emulated programs load matters. libstd-rust-web-dev:arm64 brings the
# multiarch libc6:arm64 (the same release as the machine's own libc6), whose
# libc.so.6 is listed in the host's /etc/ld.so.cache. Run with `-L /usr/aarch64-linux-gnu`,
# the dynamic loader comes from the cross sysroot (libc6-arm64-cross, an older glibc 2.36
# build) but finds libc.so.6 through that cache: a loader and libc of two builds disagree on
# the layout of the loader's shared state (_rtld_global is 4512 bytes in one, 4520 in the
# other), and the first pthread_create walks a list that never ends, at 100% CPU, with no
# system call. So with libc6:arm64 installed the programs run against / (loader and libc
# from one package), and only without it against the sysroot.
#
# Counting needs gcc and the instruction-count QEMU plugin's source, which lives beside the
# project, not in it: ../shared/tools/qemu-insncount, or INSNCOUNT_SRC.
set -euo pipefail
shopt -s inherit_errexit

TARGET=aarch64-unknown-linux-gnu
SYSROOT=/usr/aarch64-linux-gnu
CPUS=(cortex-a72 cortex-a76)
LIMIT=${AARCH64_TIMEOUT:-300}
WHAT=${1:-all}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

die() {
    echo "aarch64.sh: $*" >&2
    exit 1
}

case $WHAT in
all | smoke | test | count) ;;
*) die "usage: scripts/aarch64.sh [all|smoke|test|count]" ;;
esac

INSNCOUNT_SRC=${INSNCOUNT_SRC:-$ROOT/../shared/tools/qemu-insncount}
if [ "$WHAT" = all ] || [ "$WHAT" = count ]; then
    [ -f "$INSNCOUNT_SRC/insncount.c" ] ||
        die "cannot count instructions: no qemu-insncount plugin source at $INSNCOUNT_SRC (set INSNCOUNT_SRC to a copy of it; scripts/aarch64.sh smoke and test need none)"
fi

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

# need PACKAGE...: installs the Debian packages that are not installed yet.
need() {
    local missing=() p
    for p in "$@"; do
        dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    echo "== installing ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

need gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user qemu-user-binfmt

# has_std RUSTC: whether RUSTC has a standard library for the target.
has_std() {
    local dir
    dir=$("$1" --print target-libdir --target "$TARGET" 2>/dev/null) || return 1
    compgen -G "$dir/libstd-*.rlib" >/dev/null
}
RUSTC_BIN=${RUSTC:-rustc}
if ! has_std "$RUSTC_BIN"; then
    RUSTC_BIN=/usr/bin/rustc
    if ! has_std "$RUSTC_BIN"; then
        dpkg --print-foreign-architectures | grep -qx arm64 || {
            echo "== dpkg --add-architecture arm64"
            as_root dpkg --add-architecture arm64
        }
        need rustc-web cargo-web libstd-rust-web-dev:arm64
        has_std "$RUSTC_BIN" || die "no Rust standard library for $TARGET after installing libstd-rust-web-dev:arm64"
    fi
fi
RUSTC_BIN=$(command -v "$RUSTC_BIN")
export RUSTC=$RUSTC_BIN
# The cargo and rustdoc (doc tests) of the same toolchain.
CARGO=$(dirname "$RUSTC_BIN")/cargo
[ -x "$CARGO" ] || CARGO=cargo
[ ! -x "$(dirname "$RUSTC_BIN")/rustdoc" ] || export RUSTDOC=$(dirname "$RUSTC_BIN")/rustdoc

if [ -e /lib/ld-linux-aarch64.so.1 ] && [ -e /lib/aarch64-linux-gnu/libc.so.6 ]; then
    export QEMU_LD_PREFIX=/ # libc6:arm64: loader and libc of one build (see above)
else
    export QEMU_LD_PREFIX=$SYSROOT
fi

# Integration tests start the secchan binary themselves, so the kernel must hand aarch64 ELF
# files to qemu (binfmt_misc, from qemu-user-binfmt); QEMU_CPU and QEMU_LD_PREFIX reach those
# processes too.
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
    conf=/usr/lib/binfmt.d/qemu-aarch64.conf
    [ -f "$conf" ] || die "aarch64 binaries do not run here: $conf missing (qemu-user-binfmt)"
    [ -e /proc/sys/fs/binfmt_misc/register ] ||
        as_root mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    as_root sh -c "cat $conf >/proc/sys/fs/binfmt_misc/register"
    echo "== registered qemu-aarch64 with binfmt_misc ($conf)"
fi

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
# The release profile keeps emulated runs short.
TARGET_DIR=$("$CARGO" metadata --locked --no-deps --format-version 1 |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
[ -n "$TARGET_DIR" ] || die "cargo metadata named no target directory"
BIN=$TARGET_DIR/$TARGET/release/secchan

echo "== build ($TARGET, release; $("$RUSTC_BIN" --version); loader and libc from $QEMU_LD_PREFIX)"
"$CARGO" build --locked --release --target "$TARGET"
[ -x "$BIN" ] || die "the build left no binary at $BIN"

# emulate CPU [QEMU-OPTION...] -- SECCHAN-ARG...: runs the aarch64 secchan on CPU; stops the
# script if it does not finish within LIMIT seconds or exits non-zero.
emulate() {
    local cpu=$1 opts=() rc=0
    shift
    while [ "$1" != -- ]; do
        opts+=("$1")
        shift
    done
    shift
    timeout -k 10 "$LIMIT" qemu-aarch64 -cpu "$cpu" "${opts[@]}" "$BIN" "$@" || rc=$?
    case $rc in
    0) ;;
    124 | 137) die "secchan $* (qemu-aarch64 -cpu $cpu) did not finish within ${LIMIT}s" ;;
    *) die "secchan $* (qemu-aarch64 -cpu $cpu) exited with status $rc" ;;
    esac
}

# cargo_test CPU [CARGO-TEST-ARG...]: test binaries under qemu on CPU, each bounded.
cargo_test() {
    local cpu=$1
    shift
    echo "== tests under qemu-aarch64 -cpu $cpu: cargo test $*"
    QEMU_CPU=$cpu \
        CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="timeout -k 10 $((LIMIT * 4)) qemu-aarch64 -cpu $cpu" \
        "$CARGO" test --locked --release --target "$TARGET" "$@" ||
        die "cargo test $* under qemu-aarch64 -cpu $cpu failed or did not finish (a test binary gets $((LIMIT * 4))s)"
}

smoke() {
    local dir cpu fp out
    dir=$(mktemp -d)
    for cpu in "${CPUS[@]}"; do
        echo "== smoke under qemu-aarch64 -cpu $cpu"
        fp=$(emulate "$cpu" -- keygen --out "$dir/$cpu.key")
        [ -f "$dir/$cpu.key" ] && [ -f "$dir/$cpu.key.pub" ] || die "keygen on $cpu wrote no key files"
        out=$(emulate "$cpu" -- fingerprint "$dir/$cpu.key.pub")
        [ "$out" = "$fp" ] || die "fingerprint on $cpu printed $out, keygen $fp"
        echo "keygen, fingerprint: $fp"
        out=$(emulate "$cpu" -- demo)
        grep -q X25519MLKEM768 <<<"$out" || die "demo on $cpu printed no hybrid handshake: $out"
        echo "demo: $(grep -c . <<<"$out") lines"
        emulate "$cpu" -- bench --ops info
        emulate "$cpu" -- bench --ops handshake --iterations 2
        emulate "$cpu" -- bench --ops seal-open-1k --iterations 2
    done
    rm -rf "$dir"
    cargo_test cortex-a72 --test cli
}

run_tests() {
    local cpu
    for cpu in "${CPUS[@]}"; do
        cargo_test "$cpu"
        # The binary itself on this CPU: no illegal instruction, and the AEAD it prefers.
        emulate "$cpu" -- bench --ops info
    done
}

count() {
    local src=$INSNCOUNT_SRC work plugin log
    work=$(mktemp -d)
    plugin=$work/libinsncount.so
    log=$work/insns.log
    gcc -O2 -shared -fPIC -o "$plugin" "$src/insncount.c"
    echo "== instruction counts (plugin built from $src)"
    # positive WHAT VALUE: VALUE, which must be a number above zero.
    positive() {
        [[ $2 =~ ^[0-9]+$ ]] && [ "$2" -gt 0 ] || die "count of $1 is '${2}', not a positive number"
        echo "$2"
    }
    insns() { # cpu op suite aead n -> instructions of one run
        rm -f "$log"
        emulate "$1" -plugin "$plugin" -d plugin -D "$log" -- \
            bench --ops "$2" --suite "$3" --aead "$4" --iterations "$5" >/dev/null
        [ -s "$log" ] || die "the plugin wrote no count for bench --ops $2 on $1"
        positive "bench --ops $2 --iterations $5 on $1" "$(awk '/insns:/{print $2}' "$log")"
    }
    per_op() { # cpu op suite aead -> instructions per operation
        local n=50 zero full
        zero=$(insns "$1" "$2" "$3" "$4" 0)
        full=$(insns "$1" "$2" "$3" "$4" "$n")
        positive "one $2 ($3, $4) on $1" $(((full - zero) / n))
    }
    local cpu suite aead full upto accept device server seal both open
    printf '%-11s %-16s %-18s %12s %12s\n' cpu suite aead device server
    for cpu in "${CPUS[@]}"; do
        for suite in X25519MLKEM768 X25519; do
            for aead in ChaCha20-Poly1305 AES-256-GCM; do
                # device = (handshake up to DeviceFinish) - (server's accept_hello);
                # server = (full handshake) - (handshake up to DeviceFinish) + accept_hello.
                full=$(per_op "$cpu" handshake "$suite" "$aead")
                upto=$(per_op "$cpu" handshake-to-finish "$suite" "$aead")
                accept=$(per_op "$cpu" server-accept "$suite" "$aead")
                device=$(positive "the device side ($cpu, $suite, $aead)" $((upto - accept)))
                server=$(positive "the server side ($cpu, $suite, $aead)" $((full - upto + accept)))
                printf '%-11s %-16s %-18s %12d %12d\n' "$cpu" "$suite" "$aead" "$device" "$server"
            done
        done
    done
    printf '\n%-11s %-18s %12s %12s\n' cpu aead "seal 1 KiB" "open 1 KiB"
    for cpu in "${CPUS[@]}"; do
        for aead in ChaCha20-Poly1305 AES-256-GCM; do
            seal=$(per_op "$cpu" seal-1k X25519 "$aead")
            both=$(per_op "$cpu" seal-open-1k X25519 "$aead")
            open=$(positive "an open ($cpu, $aead)" $((both - seal)))
            printf '%-11s %-18s %12d %12d\n' "$cpu" "$aead" "$seal" "$open"
        done
    done
    rm -rf "$work"
}

case $WHAT in
all)
    run_tests
    count
    ;;
smoke) smoke ;;
test) run_tests ;;
count) count ;;
esac
echo "== aarch64 $WHAT: done"
