#!/usr/bin/env bash
# The MQTT bridge with a real, independent client: paho-mqtt (PyPI, in a venv here) against a
# real Mosquitto and the real `tidings` binary. Installs what is missing, builds the server
# binary unless TIDINGS_BIN is given, and exits non-zero on failure.
#
#   bash tests/mqtt/run.sh
#   TIDINGS_BIN=/path/to/tidings bash tests/mqtt/run.sh
set -euo pipefail
if [ -n "${TIDINGS_BIN:-}" ]; then
  TIDINGS_BIN="$(cd "$(dirname "$TIDINGS_BIN")" && pwd)/$(basename "$TIDINGS_BIN")"
  export TIDINGS_BIN
fi
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$here"
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_install() {
  as_root apt-get update -qq || true
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
}
command -v mosquitto >/dev/null 2>&1 || apt_install mosquitto
python3 -m venv --help >/dev/null 2>&1 || apt_install python3-venv
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -c 'import paho.mqtt' 2>/dev/null || .venv/bin/pip install --quiet -r requirements.txt
if [ -z "${TIDINGS_BIN:-}" ]; then
  (cd "$root" && cargo build --locked --quiet --bin tidings)
  TIDINGS_BIN="${CARGO_TARGET_DIR:-$root/target}/debug/tidings"
  export TIDINGS_BIN
fi
PATH="/usr/sbin:$PATH" .venv/bin/python -m unittest -v test_paho
