#!/usr/bin/env bash
# End-to-end tests of the demo page and the browser client in headless Chromium (Debian's
# /usr/bin/chromium driven by playwright-core; Playwright's own browser download is never used).
# Installs what is missing (chromium, node, the npm devDependency, sqlite3 for the screenshot's
# dates), builds the server and runs every *.test.js here with node's test runner. Exits non-zero
# on any failure. The two-replica test needs PostgreSQL and Redis on 127.0.0.1 (scripts/test.sh
# starts them; TIDINGS_TEST_POSTGRES_URL / TIDINGS_TEST_REDIS_URL override the addresses).
#
#   bash tests/browser/run.sh                          # all of them
#   bash tests/browser/run.sh leader.test.js           # some of them
#   TIDINGS_UPDATE_DOCS_SCREENSHOT=1 bash tests/browser/run.sh screenshot.test.js   # refresh docs/demo.png
#   TIDINGS_BROWSER_SLOWDOWN=2 bash tests/browser/run.sh  # double every wait guard on a loaded machine
#   TIDINGS_BIN=/path/to/tidings bash tests/browser/run.sh  # use an already built server (no cargo build)
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
command -v sqlite3 >/dev/null 2>&1 || apt_install sqlite3 || echo "(no sqlite3: the screenshot's notifications will all say 'just now')"
command -v psql >/dev/null 2>&1 || apt_install postgresql-client || true
# The MQTT badge test starts its own broker (a WebSocket listener for mqtt.js in the page).
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || apt_install mosquitto

# npm ci when a devDependency (playwright-core, mqtt; the gRPC-Web client, its code generator and
# esbuild) is missing or not the locked version.
locked_ok=$(cd "$here" && node -e "
  try {
    const lock = require('./package-lock.json').packages;
    const ok = Object.keys(require('./package.json').devDependencies).every((name) =>
      lock['node_modules/' + name].version === require('./node_modules/' + name + '/package.json').version);
    process.stdout.write(ok ? 'yes' : 'no');
  } catch { process.stdout.write('no'); }" 2>/dev/null || echo no)
if [ "$locked_ok" != yes ]; then
  say "npm ci (tests/browser)"
  (cd "$here" && npm ci --no-audit --no-fund --loglevel=error)
fi

if [ -n "${TIDINGS_BIN:-}" ]; then
  # Already built (scripts/test.sh passes the binary `cargo test` made): no second build.
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

say "browser end-to-end tests ($(/usr/bin/chromium --version 2>/dev/null | head -1 || echo chromium), node $(node --version))"
cd "$here"
mkdir -p artifacts
if [ "$#" -gt 0 ]; then files=("$@"); else files=(*.test.js); fi
# One file at a time: every test starts its own servers and browser, and the machine has 2 cores.
node --test --test-concurrency=1 "${files[@]}"
