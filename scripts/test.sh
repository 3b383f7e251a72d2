#!/usr/bin/env bash
# The whole test suite, on a fresh machine or a used one: makes sure PostgreSQL and Redis
# are installed and running (starting them if not), then runs the format check, clippy and
# every test. It fails loudly when a service cannot be had; it never skips a test.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n==> %s\n' "$*"; }
die() { printf '\nFAILED: %s\n' "$*" >&2; exit 1; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_install() {
  say "installing $*"
  as_root apt-get update -qq || true
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
}

ensure_postgres() {
  if ! command -v pg_ctlcluster >/dev/null 2>&1; then apt_install postgresql postgresql-client; fi
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
  if ! command -v redis-server >/dev/null 2>&1; then apt_install redis-server redis-tools; fi
  if ! redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; then
    say "starting Redis"
    as_root mkdir -p /var/lib/redis /var/log/redis
    as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
      --dir /var/lib/redis --logfile /var/log/redis/ci.log
  fi
  for _ in $(seq 1 30); do redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG && break; sleep 1; done
  redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG || die "Redis is not answering on 127.0.0.1:6379"
}

say "services"
ensure_postgres
ensure_redis
echo "PostgreSQL and Redis are up"

say "cargo fmt --check"
cargo fmt --all -- --check || die "run 'cargo fmt'"

say "cargo clippy"
cargo clippy --locked --all-targets -- -D warnings

say "cargo test"
cargo test --locked --all-targets

say "browser client unit tests (node --test)"
command -v node >/dev/null 2>&1 || apt_install nodejs
(cd clients/js && node --test)

say "all tests passed"
