#!/usr/bin/env bash
# Cross-builds secchan for aarch64-unknown-linux-gnu, runs the test suite under qemu-aarch64 as a
# Raspberry Pi 4 (-cpu cortex-a72) and a Pi 5 (-cpu cortex-a76), and counts the instructions of
# a handshake (device and server side, hybrid and classical) and of a 1 KiB record on each CPU.
#
#   scripts/aarch64.sh            build, test on both CPUs, count instructions
#   scripts/aarch64.sh test       build and test only
#   scripts/aarch64.sh count      build and count only
#
# Needs (Debian): gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user qemu-user-binfmt, and the Rust standard
# library for the target: `rustup target add aarch64-unknown-linux-gnu` (without rustup:
# Debian's rustc-web, cargo-web and libstd-rust-web-dev:arm64 after `dpkg --add-architecture
# arm64`). Counting also needs gcc to build the instruction-count QEMU plugin: the script
# builds it from ../shared/tools/qemu-insncount when that folder exists (set INSNCOUNT_SRC to
# use another copy), and otherwise skips counting with a message.
set -euo pipefail

TARGET=aarch64-unknown-linux-gnu
SYSROOT=/usr/aarch64-linux-gnu
CPUS=(cortex-a72 cortex-a76)
WHAT=${1:-all}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

die() { echo "aarch64.sh: $*" >&2; exit 1; }

command -v aarch64-linux-gnu-gcc >/dev/null ||
    die "aarch64-linux-gnu-gcc not found: apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross"
[ -d "$SYSROOT/lib" ] || die "$SYSROOT missing: apt-get install libc6-dev-arm64-cross"
command -v qemu-aarch64 >/dev/null || die "qemu-aarch64 not found: apt-get install qemu-user"
if ! rustc --print target-libdir --target "$TARGET" >/dev/null 2>&1 ||
    [ ! -d "$(rustc --print target-libdir --target "$TARGET")" ]; then
    die "no Rust standard library for $TARGET: rustup target add $TARGET (or Debian's libstd-rust-web-dev:arm64)"
fi

# Integration tests start the secchan binary themselves, so the kernel must hand aarch64 ELF
# files to qemu (binfmt_misc, from Debian's qemu-user-binfmt); QEMU_CPU and QEMU_LD_PREFIX
# below then reach those processes too.
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
    conf=/usr/lib/binfmt.d/qemu-aarch64.conf
    [ -f "$conf" ] || die "aarch64 binaries do not run here: apt-get install qemu-user-binfmt"
    [ "$(id -u)" = 0 ] || die "aarch64 binaries do not run here: as root, register $conf with binfmt_misc"
    [ -e /proc/sys/fs/binfmt_misc/register ] ||
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    cat "$conf" >/proc/sys/fs/binfmt_misc/register
    echo "== registered qemu-aarch64 with binfmt_misc ($conf)"
fi
export QEMU_LD_PREFIX=$SYSROOT

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
# The release profile keeps emulated test runs short.
PROFILE=release
BIN="target/$TARGET/$PROFILE/secchan"

echo "== build ($TARGET, $PROFILE)"
cargo build --locked --release --target "$TARGET"

run_tests() {
    local cpu=$1
    echo "== tests under qemu-aarch64 -cpu $cpu"
    QEMU_CPU=$cpu CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -cpu $cpu" \
        cargo test --locked --release --target "$TARGET"
    # The binary itself on this CPU: no illegal instruction, and the AEAD it prefers.
    qemu-aarch64 -cpu "$cpu" -L "$SYSROOT" "$BIN" bench --ops info
}

count() {
    local src=${INSNCOUNT_SRC:-$ROOT/../shared/tools/qemu-insncount}
    if [ ! -f "$src/insncount.c" ]; then
        echo "== instruction counts skipped: no qemu-insncount plugin source at $src (set INSNCOUNT_SRC)"
        return 0
    fi
    local plugin
    plugin=$(mktemp -d)/libinsncount.so
    gcc -O2 -shared -fPIC -o "$plugin" "$src/insncount.c"
    echo "== instruction counts (plugin built from $src)"
    local log
    log=$(mktemp)
    insns() { # cpu op suite aead n -> instructions of one run
        qemu-aarch64 -cpu "$1" -L "$SYSROOT" -plugin "$plugin" -d plugin -D "$log" \
            "$BIN" bench --ops "$2" --suite "$3" --aead "$4" --iterations "$5" >/dev/null
        awk '/insns:/{print $2}' "$log"
    }
    per_op() { # cpu op suite aead -> instructions per operation
        local n=20 zero full
        zero=$(insns "$1" "$2" "$3" "$4" 0)
        full=$(insns "$1" "$2" "$3" "$4" "$n")
        echo $(((full - zero) / n))
    }
    printf '%-11s %-16s %-18s %12s %12s\n' cpu suite aead device server
    for cpu in "${CPUS[@]}"; do
        for suite in X25519MLKEM768 X25519; do
            for aead in ChaCha20-Poly1305 AES-256-GCM; do
                # device = (handshake up to DeviceFinish) - (server's accept_hello);
                # server = (full handshake) - (handshake up to DeviceFinish) + accept_hello.
                local full upto accept
                full=$(per_op "$cpu" handshake "$suite" "$aead")
                upto=$(per_op "$cpu" handshake-to-finish "$suite" "$aead")
                accept=$(per_op "$cpu" server-accept "$suite" "$aead")
                printf '%-11s %-16s %-18s %12d %12d\n' "$cpu" "$suite" "$aead" \
                    $((upto - accept)) $((full - upto + accept))
            done
        done
    done
    printf '\n%-11s %-18s %12s %12s\n' cpu aead "seal 1 KiB" "open 1 KiB"
    for cpu in "${CPUS[@]}"; do
        for aead in ChaCha20-Poly1305 AES-256-GCM; do
            local seal both
            seal=$(per_op "$cpu" seal-1k X25519 "$aead")
            both=$(per_op "$cpu" seal-open-1k X25519 "$aead")
            printf '%-11s %-18s %12d %12d\n' "$cpu" "$aead" "$seal" $((both - seal))
        done
    done
}

case $WHAT in
all) for cpu in "${CPUS[@]}"; do run_tests "$cpu"; done; count ;;
test) for cpu in "${CPUS[@]}"; do run_tests "$cpu"; done ;;
count) count ;;
*) die "usage: scripts/aarch64.sh [all|test|count]" ;;
esac
echo "== aarch64: done"
