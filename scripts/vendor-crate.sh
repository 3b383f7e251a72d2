#!/usr/bin/env bash
# Re-vendor crate NAME at VERSION from crates.io into vendor/NAME and re-apply
# vendor/NAME.patch (see vendor/README.md for why we carry patches at all). The crates we carry:
#
#   scripts/vendor-crate.sh actix-http 3.20.0
#   scripts/vendor-crate.sh actix-ws 0.4.0
#
# The source comes from crates.io through cargo itself (`cargo vendor` in a throwaway project),
# so it is exactly what cargo would build. Only Cargo.toml, src/, README.md and the licence
# files are kept; the [[example]], [[test]] and [[bench]] sections of Cargo.toml are dropped
# because their files are not kept (cargo would refuse a manifest naming missing targets).
# That trimming is mechanical and done here; the patch holds only our code change, so it has
# the best chance of applying to a new release unchanged.
#
# Nothing in vendor/ is touched unless the patch applies cleanly (no fuzz): a release that
# moved the patched code fails loudly, and the patch must then be redone by hand.
# For the version we have, the result is byte for byte what is committed (`git status` clean).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
die() { printf 'vendor-crate: %s\n' "$*" >&2; exit 1; }

[ $# -eq 2 ] || die "usage: $0 NAME VERSION   (for example actix-http 3.20.0)"
crate=$1 version=$2
case "$crate" in actix-http | actix-ws) ;; *) die "we carry no patch for $crate (vendor/README.md)" ;; esac
[[ $version =~ ^[0-9]+\.[0-9]+\.[0-9]+([-+][0-9A-Za-z.+-]+)?$ ]] || die "not a version: $version"
patchfile="$root/vendor/$crate.patch"
dest="$root/vendor/$crate"
[ -f "$patchfile" ] || die "missing $patchfile"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# A throwaway project outside the workspace whose only dependency is that exact release.
mkdir -p "$tmp/fetch/src"
cat >"$tmp/fetch/Cargo.toml" <<EOF
[package]
name = "vendor-$crate"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
$crate = "=$version"
EOF
echo 'fn main() {}' >"$tmp/fetch/src/main.rs"
echo "==> fetching $crate $version from crates.io (cargo vendor)"
(cd "$tmp/fetch" && cargo vendor --quiet --versioned-dirs "$tmp/crates" >/dev/null) \
  || die "cargo could not fetch $crate $version"
src="$tmp/crates/$crate-$version"
[ -d "$src" ] || die "cargo vendor did not produce $src"

stage="$tmp/$crate"
mkdir "$stage"
cp -R "$src/src" "$stage/src"
cp "$src/README.md" "$stage/"
licences=("$src"/LICENSE*)
[ -e "${licences[0]}" ] || die "$crate $version has no LICENSE* file"
cp "${licences[@]}" "$stage/"
# Drop every [[example]] / [[test]] / [[bench]] table: from its header to the next table header
# that is not one of them (the blank line that ends a dropped table goes with it).
awk '
  /^\[\[(example|test|bench)\]\][[:space:]]*$/ { skip = 1; next }
  /^\[/ { skip = 0 }
  !skip
' "$src/Cargo.toml" >"$stage/Cargo.toml"
if grep -Eq '^\[\[(example|test|bench)\]\]' "$stage/Cargo.toml"; then
  die "could not drop the example/test/bench targets from Cargo.toml"
fi

echo "==> applying vendor/$crate.patch"
if ! patch -p1 --forward --batch --fuzz=0 --no-backup-if-mismatch -d "$stage" <"$patchfile"; then
  die "vendor/$crate.patch does not apply to $crate $version; vendor/$crate is unchanged.
Redo the change by hand on $version (see vendor/README.md) and regenerate the patch."
fi
leftovers="$(find "$stage" -name '*.rej' -o -name '*.orig')"
[ -z "$leftovers" ] || die "patch left files behind: $leftovers"

rm -rf "$dest"
cp -R "$stage" "$dest"
echo "==> vendor/$crate is now $crate $version with our patch"
if [ "$(cd "$root" && git status --porcelain -- "vendor/$crate" | head -1)" = "" ]; then
  echo "    (identical to what is committed)"
else
  echo "    next: cargo update -p $crate (so Cargo.lock takes the new version), review"
  echo "    git diff, run the tests and bench/run.sh idle; see vendor/README.md"
fi
