#!/usr/bin/env bash
# Runs every fuzz target (fuzz/, docs/fuzzing.md) for SECONDS each and prints, per target,
# the executions, libFuzzer's coverage (edges, features), the corpus, and how many corpus
# inputs reached each stage of the target (handshake: DeviceFinish processing, the record
# phase, key updates, closes; ...). Exits 1 if a target crashed or did not reach the stages
# listed for it below.
#
#   bash scripts/fuzz.sh [SECONDS] [TARGET...]     (default 60 s, every target)
#
# cargo-fuzz needs nightly features; on the stable toolchain RUSTC_BOOTSTRAP=1 allows them.
# Inputs found are kept in fuzz/corpus/TARGET (not committed); fuzz/seeds/TARGET holds the
# small checked-in seed corpora; crashes land in fuzz/artifacts/TARGET.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${1:-60}
shift || true
all=(handshake_flow resume_flow cookie_flow admission delivery mqtt_delivery relay registry_log
  handshake_messages record_open registry_parsers registry_verify)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all[@]}")

# Stages each target must reach in its corpus (the names its Reach records).
declare -A must=(
  [handshake_flow]="device_finish established record message key_update close"
  [resume_flow]="ticket_taken resume_accepted resumed record"
  [cookie_flow]="cookie_hello cookie_valid cookie_refused device_finish established record"
  [admission]="proceed cookie busy established replaced evicted"
  [delivery]="written ack all_delivered"
  [mqtt_delivery]="established record written ack all_delivered"
  [relay]="relayed ack e2e_established e2e_message downlink refused all_delivered"
  [registry_log]="verified device_accepted"
)

if ! command -v cargo-fuzz >/dev/null; then
  cargo install --locked --version 0.13.2 cargo-fuzz
fi
export RUSTC_BOOTSTRAP=1
# No sanitizer: secchan forbids unsafe code, and coverage-guided search is what is wanted;
# debug assertions (overflow checks) stay on.
cargo fuzz build -s none
bin=target/x86_64-unknown-linux-gnu/release

status=0
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t" "seeds/$t"
  log=$(mktemp)
  if ! "$bin/$t" "corpus/$t" "seeds/$t" -max_total_time="$secs" -print_final_stats=1 \
    -max_len=8192 -rss_limit_mb=2048 -timeout=10 -artifact_prefix="artifacts/$t/" >"$log" 2>&1; then
    echo "== $t: CRASHED, see fuzz/artifacts/$t/ ($log)"
    tail -30 "$log"
    status=1
    continue
  fi
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
  last=$(grep -E '^#[0-9]+' "$log" | tail -1)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
  files=$(find "corpus/$t" -type f | wc -l)
  echo "== $t: ${execs:-0} executions (${rate:-0}/s) in ${secs}s, coverage ${cov:-?} edges, ${ft:-?} features, corpus ${files} inputs"
  # Replay the corpus once with the stage report on: inputs reaching each stage.
  SECCHAN_FUZZ_REACH=1 "$bin/$t" -runs=0 "corpus/$t" "seeds/$t" 2>&1 |
    sed -n 's/^secchan-reach [a-z_]* //p' | tr ' ' '\n' | sed '/^$/d' | sort | uniq -c |
    sort -rn >"$log.reach" || true
  if [ -s "$log.reach" ]; then
    echo "   stages (corpus inputs reaching each):" $(awk '{printf "%s=%s ", $2, $1}' "$log.reach")
  fi
  for stage in ${must[$t]:-}; do
    if ! awk -v s="$stage" '$2 == s { found = 1 } END { exit !found }' "$log.reach"; then
      echo "   MISSING stage: $stage"
      status=1
    fi
  done
  rm -f "$log" "$log.reach"
done
exit $status
