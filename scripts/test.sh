#!/usr/bin/env bash
# The test command: installs the system packages the test suite needs if they are missing,
# then runs every test, in the default build and, for the tests it changes, with the kyber-r3
# feature. Usage: bash scripts/test.sh [extra cargo test arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(mosquitto systemd postgresql haproxy tmux)
# mosquitto: the MQTT integration tests start a real broker on a loopback port.
# systemd: tests/systemd.rs checks dist/systemd/*.service with systemd-analyze (nothing is
# started as a service).
# postgresql: tests/sink_postgres.rs and tests/scale_out.rs create a throwaway cluster (initdb,
#   pg_ctl) on a loopback port; as root they run it as the postgres user the package creates.
# haproxy: tests/scale_out.rs puts two server instances behind it.
# tmux: tests/chat_tui.rs types into `secchan chat`'s terminal UI and reads its screen.

missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "scripts/test.sh: installing ${missing[*]}" >&2
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

cargo test --locked "$@"
# The benchmark-only kyber-r3 feature (the X25519Kyber768R3 suite): only the targets whose tests
# change with it, so the second build is the secchan crate and PQClean's Kyber, not every test.
cargo test --locked --features kyber-r3 --lib --test tcp --test bench --test kyber_feature "$@"
