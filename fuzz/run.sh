#!/usr/bin/env bash
# Fuzzes the STOMP frame decoder (fuzz_targets/stomp_frame.rs) for SECONDS seconds (default 60).
#
#   bash fuzz/run.sh 60      # CI's short run
#   bash fuzz/run.sh 600     # the 10-minute run the STOMP issue asks of a developer
#
# Installs cargo-fuzz if missing. Uses a nightly toolchain when rustup has one, else the stable
# one with RUSTC_BOOTSTRAP=1 (cargo-fuzz needs -Z sanitizer flags). The corpus is kept in
# fuzz/corpus/stomp_frame and seeded with a few valid frames so a short run starts deep.
# Exits non-zero if the fuzzer finds a crash (the input is left in fuzz/artifacts/stomp_frame).
# FUZZ_TARGET_DIR picks the cargo target directory (default fuzz/target).
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-60}"
case "$seconds" in ''|*[!0-9]*) echo "usage: $0 SECONDS" >&2; exit 2 ;; esac

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "==> installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

toolchain=()
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  toolchain=(+nightly)
else
  export RUSTC_BOOTSTRAP=1
fi

corpus=corpus/stomp_frame
mkdir -p "$corpus"
if [ -z "$(ls -A "$corpus")" ]; then
  # 8 control bytes (chunk sizes, limits switch), then the STOMP input.
  seed() { printf '\x01\x03\x07\x1f\x00\x00\x00\x00%b' "$1" > "$corpus/seed-$2"; }
  seed 'CONNECT\naccept-version:1.2\nheart-beat:500,500\npasscode:x\n\n\0' connect
  seed 'SUBSCRIBE\nid:0\ndestination:/user/queue/notifications\nack:client\n\n\0' subscribe
  seed 'SEND\ndestination:/app/read\ncontent-length:11\n\n{"up_to":1}\0\n\n' send
  seed 'ACK\nid:1\ntransaction:t\\c1\n\n\0\r\n' ack
  seed 'MESSAGE\r\nk:a\\\\b\\n\r\n\r\nbody\0' crlf
fi

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
echo "==> cargo ${toolchain[*]} fuzz run stomp_frame for ${seconds}s"
set +e
cargo "${toolchain[@]}" fuzz run stomp_frame --target-dir "${FUZZ_TARGET_DIR:-target}" "$corpus" \
  -- -max_total_time="$seconds" -print_final_stats=1 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
runs=$(sed -n 's/^Done \([0-9]*\) runs in \([0-9]*\) second.*/\1 execs in \2 s/p' "$log" | tail -1)
if [ "$rc" = 0 ]; then
  echo "fuzz: stomp_frame: ${runs:-no stats}, 0 crashes"
else
  echo "fuzz: stomp_frame FAILED (exit $rc); crashing inputs, if any, are in fuzz/artifacts/stomp_frame" >&2
fi
exit "$rc"
