#!/usr/bin/env bash
# Fails unless every actix-http and actix-ws in the dependency graph is our patched copy in
# vendor/ (vendor/README.md says what each patch does and why).
#
# The `[patch.crates-io]` entry in Cargo.toml only takes effect while the vendored version
# satisfies what actix-web asks for: after an actix-web upgrade that needs a newer actix-http,
# cargo merely warns "patch `actix-http` was not used in the crate graph" and builds the
# unpatched crates.io release, silently bringing back the 8 KiB-per-idle-connection buffers
# (see vendor/README.md). scripts/test.sh runs this first, so that cannot go unnoticed.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
die() { printf 'FAILED (vendored crates): %s\n' "$*" >&2; exit 1; }

command -v python3 >/dev/null 2>&1 || die "python3 is needed to read cargo metadata"
errors="$(mktemp)"
trap 'rm -f "$errors"' EXIT
if ! metadata="$(cd "$root" && cargo metadata --locked --format-version 1 2>"$errors")"; then
  cat "$errors" >&2
  die "cargo metadata --locked failed (is Cargo.lock out of date with Cargo.toml?)"
fi

for crate in actix-http actix-ws; do
printf '%s' "$metadata" | python3 -c '
import json, os, sys
name, want = sys.argv[1], os.path.realpath(sys.argv[2])
found = [p for p in json.load(sys.stdin)["packages"] if p["name"] == name]
bad = [p for p in found if os.path.realpath(p["manifest_path"]) != want]
if not found:
    sys.exit(name + " is not in the dependency graph at all")
if bad:
    for p in bad:
        print("{} {} resolves to {} (source {}), not {}".format(
            name, p["version"], p["manifest_path"], p["source"], want), file=sys.stderr)
    sys.exit("the patched " + name + " is not used: check [patch.crates-io] in Cargo.toml and "
             "that vendor/" + name + " satisfies the version its dependents require "
             "(re-vendor with scripts/vendor-crate.sh " + name + " VERSION; see vendor/README.md)")
p = found[0]
print("{} {} is the vendored, patched copy ({})".format(name, p["version"], want))
' "$crate" "$root/vendor/$crate/Cargo.toml" || die "see above"
done
