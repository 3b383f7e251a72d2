#!/usr/bin/env bash
# bench/profile.sh TAG -- TIDINGS-BENCH-ARGS...
#
# Where one scenario's time goes: starts a Tidings release build on a fresh PostgreSQL
# database, runs `tidings-bench TIDINGS-BENCH-ARGS --url ...` against it, and meanwhile
#   - records the server with `perf record -F 999 -g` (apt-get install linux-perf), and
#   - samples every active Postgres client backend's wait event from pg_stat_activity every
#     0.1 s ("CPU:-" when it waits on nothing),
# then prints the bench's summary, the wait-event counts and perf's top symbols.
# Files go to $PROFILE_OUT (default /tmp/tidings-profile): perf-TAG.data, waits-TAG.txt,
# TAG.json. The figures bench/RESULTS.md quotes as profiles come from this script, e.g.
#   bench/profile.sh x100 -- ingest --target tidings --recipients-per-request 100 \
#     --users 10000 --concurrency 64 --duration 8
#   bench/profile.sh topic -- topic --target tidings --subscribers 100000 --online 10000 --rounds 3
# Environment: TIDINGS_BIN (default target/release/tidings), BENCH_PG_ADMIN, PROFILE_PORT
# (18500), TIDINGS__* passed through to the server.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
BIN="${TIDINGS_BIN:-$TARGET_DIR/release/tidings}"
BENCH="$TARGET_DIR/release/tidings-bench"
ADMIN="${BENCH_PG_ADMIN:-postgres://postgres@127.0.0.1:5432/postgres}"
PORT="${PROFILE_PORT:-18500}"
OUT="${PROFILE_OUT:-/tmp/tidings-profile}"
TAG="${1:-}"
[ -n "$TAG" ] && [ "${2:-}" = "--" ] || { sed -n '2,/^set -euo/p' "$0" | grep '^#' >&2; exit 2; }
shift 2
case "$TAG" in *[!a-z0-9_]*) echo "TAG: lower-case letters, digits and _ only (it names a database)" >&2; exit 2 ;; esac
for f in "$BIN" "$BENCH"; do [ -x "$f" ] || { echo "no $f (cargo build --release -p tidings -p tidings-bench)" >&2; exit 1; }; done
command -v perf >/dev/null || { echo "perf not found (apt-get install linux-perf)" >&2; exit 1; }
export TIDINGS__AUTH__JWT_SECRET="${TIDINGS__AUTH__JWT_SECRET:-profile-secret-0123456789abcdef0123456789abcdef}"
mkdir -p "$OUT"
DB="profile_${TAG}_$$"
psql -X -q -d "$ADMIN" -c "CREATE DATABASE $DB" >/dev/null
dir="$(mktemp -d)"
PID= PERF= SAMPLER=
cleanup() {
  [ -z "$PERF" ] || { kill -INT "$PERF" 2>/dev/null; wait "$PERF" 2>/dev/null || true; }
  [ -z "$SAMPLER" ] || kill "$SAMPLER" 2>/dev/null || true
  [ -z "$PID" ] || { kill "$PID" 2>/dev/null; wait "$PID" 2>/dev/null || true; }
  psql -X -q -d "$ADMIN" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
(cd "$dir" && exec env -u TIDINGS_CONFIG -u RUST_LOG TIDINGS__SERVER__LISTEN="127.0.0.1:$PORT" \
  TIDINGS__GRPC__LISTEN=off TIDINGS__DATABASE__URL="${ADMIN%/*}/$DB" \
  TIDINGS__LOG__LEVEL="${TIDINGS__LOG__LEVEL:-warn}" "$BIN" serve) >"$dir/log" 2>&1 &
PID=$!
for _ in $(seq 300); do
  kill -0 "$PID" 2>/dev/null || { cat "$dir/log" >&2; exit 1; }
  curl -sf -o /dev/null --max-time 1 "http://127.0.0.1:$PORT/readyz" && break
  sleep 0.1
done
perf record -F 999 -g -p "$PID" -o "$OUT/perf-$TAG.data" >"$OUT/perf-$TAG.log" 2>&1 &
PERF=$!
(while kill -0 "$PID" 2>/dev/null; do
  psql -X -At -d "$ADMIN" -c "SELECT coalesce(wait_event_type, 'CPU') || ':' || coalesce(wait_event, '-')
    FROM pg_stat_activity WHERE datname = '$DB' AND state = 'active' AND backend_type = 'client backend'"
  sleep 0.1
done) >"$OUT/waits-$TAG.txt" 2>/dev/null &
SAMPLER=$!
"$BENCH" "$@" --url "http://127.0.0.1:$PORT" --server-pid "$PID" --label "$TAG" --json "$OUT/$TAG.json" 2>&1 |
  grep -v '^  connecting:\|^  round [0-9]' | tail -6
kill -INT "$PERF"; wait "$PERF" 2>/dev/null || true; PERF=
echo
echo "Postgres client backends' wait events, 0.1 s samples ($TAG):"
sort "$OUT/waits-$TAG.txt" | uniq -c | sort -rn | head -10
echo
echo "perf, the server's top symbols (self):"
perf report -i "$OUT/perf-$TAG.data" --no-children -g none --sort dso,symbol --stdio 2>/dev/null |
  grep '%' | cut -c1-150 | head -30
