#!/usr/bin/env bash
# The whole test suite, on a fresh machine or a used one. It installs what the tests need
# (Debian packages, npm and PyPI packages) and starts PostgreSQL and Redis if they are down,
# then runs the format check, clippy, every Rust test (API on SQLite and on Postgres+Redis,
# multi-process cluster, nginx topology), the browser client's unit tests, the end-to-end
# tests in headless Chromium, the STOMP client tests, a short fuzz run and a small benchmark
# against Nchan. It fails loudly when something cannot be had; it never skips a test.
#
# QUICK=1 runs only fmt, clippy and the Rust tests.
# The debug server binary is compiled once, by `cargo test`; the later suites run it via
# TIDINGS_BIN. Every stage is timed; the durations are printed at the end, also on failure.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n==> %s\n' "$*"; }
die() { printf '\nFAILED: %s\n' "$*" >&2; exit 1; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# `stage NAME COMMAND...` runs one step of the suite and times it (COMMAND may be a function).
# A failing COMMAND stops the script as before (set -e); the EXIT trap then reports it as failed.
# Under `stage ... || die ...` it returns COMMAND's status instead.
stage_rows=() stage_now='' stage_start=0
stage() {
  local name=$1; shift
  say "$name"
  stage_now=$name stage_start=$SECONDS
  "$@"
  local rc=$?
  stage_rows+=("$name|$((SECONDS - stage_start))|$([ "$rc" = 0 ] && echo ok || echo "FAILED ($rc)")")
  stage_now=''
  return "$rc"
}
# `together NAME 'COMMAND' NAME 'COMMAND' ...` runs independent suites at once (the machine has
# two cores and these mostly wait on their servers), each into its own log, printed when all are
# done; each gets its own row in the table, and the group one row for its wall time.
together() {
  local dir names=() pids=() i=0 j rc secs failed=0 start=$SECONDS
  dir=$(mktemp -d)
  while [ $# -gt 0 ]; do
    names+=("$1")
    (
      begun=$SECONDS
      set +e
      bash -c "$2" >"$dir/$i.log" 2>&1
      echo "$? $((SECONDS - begun))" >"$dir/$i.rc"
    ) &
    pids+=($!)
    i=$((i + 1))
    shift 2
  done
  say "together: ${names[*]}"
  stage_now="together (wall time)" stage_start=$start
  wait "${pids[@]}" || true
  stage_now=''
  # Passed suites' output first, failed ones' last, so that the end of the run's output (all
  # that a CI summary may keep) shows what failed.
  local order=() failing=()
  for j in "${!names[@]}"; do
    read -r rc secs <"$dir/$j.rc" || { rc=1; secs=0; echo "1 0" >"$dir/$j.rc"; }
    stage_rows+=("  ${names[$j]}|$secs|$([ "$rc" = 0 ] && echo ok || echo "FAILED ($rc)")|concurrent")
    if [ "$rc" = 0 ]; then order+=("$j"); else failing+=("$j"); failed=1; fi
  done
  for j in "${order[@]}" "${failing[@]}"; do
    read -r rc secs <"$dir/$j.rc"
    say "${names[$j]}: its output$([ "$rc" = 0 ] || echo " (FAILED, exit $rc)")"
    cat "$dir/$j.log"
  done
  stage_rows+=("together (wall time)|$((SECONDS - start))|$([ "$failed" = 0 ] && echo ok || echo FAILED)")
  rm -rf "$dir"
  return "$failed"
}

stage_report() {
  local rc=$? row name secs status kind sum=0
  [ -z "$stage_now" ] || stage_rows+=("$stage_now|$((SECONDS - stage_start))|FAILED ($rc)")
  printf '\n==> stage durations\n'
  for row in "${stage_rows[@]}"; do
    IFS='|' read -r name secs status kind <<<"$row"
    printf '  %-52s %4d:%02d  %s\n' "$name" $((secs / 60)) $((secs % 60)) "$status"
    [ "$kind" = concurrent ] || sum=$((sum + secs))
  done
  printf '  %-52s %4d:%02d\n' "(setup outside the stages)" $(((SECONDS - sum) / 60)) $(((SECONDS - sum) % 60))
  printf '  %-52s %4d:%02d  %s\n' "total" $((SECONDS / 60)) $((SECONDS % 60)) "$([ "$rc" = 0 ] && echo ok || echo "FAILED ($rc)")"
  exit "$rc"
}
trap stage_report EXIT

# Debian packages the tests use, installed in one pass when any is missing.
# command-or-file:package
NEEDED=(
  pg_ctlcluster:postgresql psql:postgresql-client redis-server:redis-server redis-cli:redis-tools
  nginx:nginx /usr/lib/nginx/modules/ngx_nchan_module.so:libnginx-mod-nchan
  docker-compose:docker-compose /usr/bin/chromium:chromium curl:curl node:nodejs npm:npm
  mosquitto:mosquitto mosquitto_passwd:mosquitto
)
missing=()
for entry in "${NEEDED[@]}"; do
  what=${entry%%:*} pkg=${entry#*:}
  if [[ $what == /* ]]; then [ -e "$what" ] || missing+=("$pkg")
  else command -v "$what" >/dev/null 2>&1 || missing+=("$pkg"); fi
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  as_root apt-get update -qq || true
  if ! DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
    # One package that conflicts with what the machine already has (for example Debian's npm
    # beside a Node.js installed another way) fails the whole batch: retry one at a time, so
    # only a package that really cannot be had stops the run.
    for pkg in $(printf '%s\n' "${missing[@]}" | sort -u); do
      DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null \
        || die "could not install $pkg"
    done
  fi
fi

ensure_postgres() {
  if ! pg_isready -q -h 127.0.0.1 -p 5432; then
    say "starting PostgreSQL"
    as_root pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -1)" main start || true
  fi
  for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
  pg_isready -q -h 127.0.0.1 -p 5432 || die "PostgreSQL is not answering on 127.0.0.1:5432"
  psql "${TIDINGS_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}" -qAtc 'select 1' >/dev/null \
    || die "cannot log in to PostgreSQL as postgres on 127.0.0.1:5432 (the tests need trust auth or TIDINGS_TEST_POSTGRES_URL)"
}

ensure_redis() {
  if ! redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; then
    say "starting Redis"
    as_root mkdir -p /var/lib/redis /var/log/redis
    as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
      --dir /var/lib/redis --logfile /var/log/redis/ci.log
  fi
  for _ in $(seq 1 30); do redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG && break; sleep 1; done
  redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG || die "Redis is not answering on 127.0.0.1:6379"
}

# A [patch.crates-io] that cargo does not use is only a warning; make it an error.
stage "vendored actix-http and actix-ws are the ones in use" scripts/check-vendored.sh

services() {
  ensure_postgres
  ensure_redis
  echo "PostgreSQL and Redis are up"
}
stage services services
# Streams and multi-process tests hold many sockets.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

stage "cargo fmt --check" cargo fmt --all -- --check || die "run 'cargo fmt'"

stage "cargo clippy" cargo clippy --locked --workspace --all-targets -- -D warnings

# The API suite's provider tests (tests/api/oidc.rs) run node-oidc-provider from tests/oidc.
stage "OpenID Connect provider for the API suite (npm ci in tests/oidc)" \
  env -C tests/oidc npm ci --no-audit --no-fund --loglevel=error

stage "cargo test" cargo test --locked --workspace --all-targets

# For the integration tests, `cargo test` has just built the server binary, with the features
# of the whole workspace and its dev-dependencies. The suites below run that binary: their own
# `cargo build --bin tidings` resolves features for the server alone and so compiled sqlx,
# actix-web, tokio... and the server a second time.
target_dir="${CARGO_TARGET_DIR:-target}"
case "$target_dir" in /*) ;; *) target_dir="$PWD/$target_dir" ;; esac
export TIDINGS_BIN="$target_dir/debug/tidings"
[ -x "$TIDINGS_BIN" ] || die "cargo test did not leave the server binary at $TIDINGS_BIN"

[ "${QUICK:-0}" = 1 ] && { say "QUICK=1: stopping after the Rust tests"; exit 0; }

stage "browser client unit tests (node --test)" env -C clients/js node --test

for suite in tests/browser/run.sh tests/stomp/run.sh; do  # end-to-end in Chromium; STOMP clients
  if [ -f "$suite" ]; then
    stage "$suite" bash "$suite"
  fi
done
stage "SockJS end-to-end (sockjs-client + stompjs in Chromium, every transport)" bash tests/sockjs/run.sh

together \
  "tests/grpc/run.sh (grpcio client, gRPC-Web wire)" "bash tests/grpc/run.sh" \
  "tests/mqtt/run.sh (paho-mqtt, Mosquitto)" "bash tests/mqtt/run.sh" \
  "tests/openapi/run.sh (validator, generated client, schemathesis)" "bash tests/openapi/run.sh" \
  "fuzzing the STOMP frame decoder briefly" "bash fuzz/run.sh ${FUZZ_SECONDS:-60}" \
  "tests/upgrade/run.sh (the previous release beside this one)" "bash tests/upgrade/run.sh"

if [ -f bench/run.sh ]; then
  # The load generator with the feature set `cargo test` used: this links only its two binaries,
  # where bench/run.sh's own `cargo build -p tidings-bench` would recompile tokio, actix-web,
  # hyper, serde... (56 crates) for that package's features alone.
  stage "bench binaries (cargo build --workspace --all-targets)" cargo build --locked --workspace --all-targets
  stage "small benchmark against Nchan (checks for loss, not speed)" \
    env BENCH_PROFILE=debug BENCH_SKIP_BUILD=1 bash bench/run.sh unicast --small
fi

say "all tests passed"
