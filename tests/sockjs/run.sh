#!/usr/bin/env bash
# SockJS end-to-end tests: real sockjs-client with @stomp/stompjs in headless Chromium (Debian's
# /usr/bin/chromium driven by playwright-core), each SockJS transport forced in turn, against a real
# `tidings serve`. Installs what is missing, builds the server unless TIDINGS_BIN is given, and runs
# every *.test.js here with node's test runner. Exits non-zero on any failure.
#
#   bash tests/sockjs/run.sh
#   TIDINGS_BIN=/path/to/tidings bash tests/sockjs/run.sh
#   TIDINGS_SOCKJS_SLOWDOWN=2 bash tests/sockjs/run.sh   # double every wait guard on a loaded machine
set -euo pipefail
start_dir="$PWD"
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"

say() { printf '\n==> %s\n' "$*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_updated=
apt_install() {
  say "installing $*"
  if [ -z "$apt_updated" ]; then as_root apt-get update -qq || true; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
}

[ -x /usr/bin/chromium ] || apt_install chromium
command -v node >/dev/null 2>&1 || apt_install nodejs
command -v npm >/dev/null 2>&1 || apt_install npm
say "npm ci (tests/sockjs)"
(cd "$here" && npm ci --no-audit --no-fund --loglevel=error)

if [ -n "${TIDINGS_BIN:-}" ]; then
  case "$TIDINGS_BIN" in /*) ;; *) TIDINGS_BIN="$start_dir/$TIDINGS_BIN" ;; esac
  [ -x "$TIDINGS_BIN" ] || { echo "TIDINGS_BIN=$TIDINGS_BIN is not an executable" >&2; exit 1; }
  say "using TIDINGS_BIN=$TIDINGS_BIN (no cargo build)"
else
  say "cargo build --locked --bin tidings"
  (cd "$root" && cargo build --locked --bin tidings)
  target_dir="${CARGO_TARGET_DIR:-$root/target}"
  case "$target_dir" in /*) ;; *) target_dir="$root/$target_dir" ;; esac
  TIDINGS_BIN="$target_dir/debug/tidings"
fi
export TIDINGS_BIN
export CHROMIUM_PATH=/usr/bin/chromium

say "SockJS end-to-end ($(/usr/bin/chromium --version 2>/dev/null | head -1 || echo chromium), node $(node --version))"
cd "$here"
if [ "$#" -gt 0 ]; then files=("$@"); else files=(*.test.js); fi
node --test --test-concurrency=1 --test-timeout=300000 "${files[@]}"
