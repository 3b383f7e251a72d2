#!/usr/bin/env bash
# Fails unless every actix-http in the dependency graph is our patched copy in vendor/actix-http.
#
# The `[patch.crates-io]` entry in Cargo.toml only takes effect while the vendored version
# satisfies what actix-web asks for: after an actix-web upgrade that needs a newer actix-http,
# cargo merely warns "patch `actix-http` was not used in the crate graph" and builds the
# unpatched crates.io release, silently bringing back the 8 KiB-per-idle-connection buffers
# (see vendor/README.md). scripts/test.sh runs this first, so that cannot go unnoticed.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
die() { printf 'FAILED (vendored actix-http): %s\n' "$*" >&2; exit 1; }

command -v python3 >/dev/null 2>&1 || die "python3 is needed to read cargo metadata"
errors="$(mktemp)"
trap 'rm -f "$errors"' EXIT
if ! metadata="$(cd "$root" && cargo metadata --locked --format-version 1 2>"$errors")"; then
  cat "$errors" >&2
  die "cargo metadata --locked failed (is Cargo.lock out of date with Cargo.toml?)"
fi

want="$root/vendor/actix-http/Cargo.toml"
printf '%s' "$metadata" | python3 -c '
import json, os, sys
want = os.path.realpath(sys.argv[1])
found = [p for p in json.load(sys.stdin)["packages"] if p["name"] == "actix-http"]
bad = [p for p in found if os.path.realpath(p["manifest_path"]) != want]
if not found:
    sys.exit("actix-http is not in the dependency graph at all")
if bad:
    for p in bad:
        print("actix-http {} resolves to {} (source {}), not {}".format(
            p["version"], p["manifest_path"], p["source"], want), file=sys.stderr)
    sys.exit("the patched actix-http is not used: check [patch.crates-io] in Cargo.toml and "
             "that vendor/actix-http satisfies the version actix-web requires "
             "(re-vendor with scripts/vendor-actix-http.sh VERSION; see vendor/README.md)")
p = found[0]
print("actix-http {} is the vendored, patched copy ({})".format(p["version"], want))
' "$want" || die "see above"
