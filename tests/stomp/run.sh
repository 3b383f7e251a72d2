#!/usr/bin/env bash
# STOMP over WebSocket with real clients against a real server: @stomp/stompjs (Node, `node --test`)
# and stomp.py (Python, unittest). Installs what is missing, builds the server binary, runs both,
# prints one summary line per runner, and exits non-zero if either failed.
#
#   bash tests/stomp/run.sh            # everything
#   TIDINGS_BIN=/path/to/tidings ...   # use an already built binary (skips cargo build)
set -uo pipefail
if [ -n "${TIDINGS_BIN:-}" ]; then
  # Relative to where the script was started from, before the cd below.
  TIDINGS_BIN="$(cd "$(dirname "$TIDINGS_BIN")" && pwd)/$(basename "$TIDINGS_BIN")"
  export TIDINGS_BIN
fi
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$here"

say() { printf '\n==> %s\n' "$*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_install() {
  as_root apt-get update -qq || true
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
}

say "tools"
command -v node >/dev/null 2>&1 || apt_install nodejs
command -v npm >/dev/null 2>&1 || apt_install npm
command -v python3 >/dev/null 2>&1 || apt_install python3
python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip
(npm ci --no-audit --no-fund --loglevel=error) || { echo "npm ci failed" >&2; exit 1; }
if ! python3 -c 'import stomp' 2>/dev/null; then
  python3 -m pip install --quiet -r requirements.txt \
    || python3 -m pip install --quiet --break-system-packages -r requirements.txt \
    || { echo "pip install stomp.py failed" >&2; exit 1; }
fi
echo "node $(node --version), stomp.py $(python3 -c 'import stomp; print(stomp.__version__)')"

if [ -z "${TIDINGS_BIN:-}" ]; then
  say "cargo build --bin tidings"
  (cd "$root" && cargo build --locked --quiet --bin tidings) || { echo "cargo build failed" >&2; exit 1; }
fi

status=0
logs="$(mktemp -d)"

say "@stomp/stompjs (node --test)"
node --test --test-concurrency=1 --test-timeout=120000 2>&1 | tee "$logs/node.txt"
node_rc=${PIPESTATUS[0]}
node_pass=$(sed -n 's/^# pass \([0-9]*\)$/\1/p' "$logs/node.txt" | tail -1)
node_fail=$(sed -n 's/^# fail \([0-9]*\)$/\1/p' "$logs/node.txt" | tail -1)

say "stomp.py (python3 -m unittest)"
python3 -m unittest -v test_stomp_py 2>&1 | tee "$logs/python.txt"
py_rc=${PIPESTATUS[0]}
py_ran=$(sed -n 's/^Ran \([0-9]*\) tests\{0,1\} in .*/\1/p' "$logs/python.txt" | tail -1)
py_fail=$(grep -cE '^(FAIL|ERROR): ' "$logs/python.txt")

[ "$node_rc" = 0 ] || status=1
[ "$py_rc" = 0 ] || status=1
say "summary"
echo "stompjs: ${node_pass:-0} passed, ${node_fail:-0} failed"
py_pass=$(( ${py_ran:-0} - py_fail )); [ "$py_pass" -ge 0 ] || py_pass=0
echo "stomp.py: ${py_pass} passed, ${py_fail} failed"
rm -rf "$logs"
exit $status
