#!/usr/bin/env bash
# The mixed-version test (docs/upgrading.md): builds the previous release named in
# release/previous into its own target directory, cached between runs, and runs
# tests/upgrade/main.rs with it beside this build, on Postgres + Redis (a rolling upgrade)
# and on SQLite (stop, upgrade, start).
#
# The build of the previous release is kept under $TIDINGS_UPGRADE_CACHE (default
# /var/cache/tidings-upgrade, or ~/.cache/tidings-upgrade when that is not writable), one
# directory per commit: a fresh clone on a machine that ran it before builds nothing. The tag
# v<version> is checked against the commit when the clone has it (CI's fresh clone may not).
#
# TIDINGS_BIN (set by scripts/test.sh) is this build's server; without it, cargo builds it.
set -euo pipefail
cd "$(dirname "$0")/../.."
die() { printf 'tests/upgrade: %s\n' "$*" >&2; exit 1; }

version=$(sed -n 's/^version=//p' release/previous)
commit=$(sed -n 's/^commit=//p' release/previous)
[ -n "$version" ] && [ -n "$commit" ] || die "release/previous names no version and commit"
git cat-file -e "$commit^{commit}" 2>/dev/null \
  || die "commit $commit (release $version) is not in this clone; fetch the full history"
if tagged=$(git rev-parse -q --verify "refs/tags/v$version^{commit}" 2>/dev/null); then
  [ "$tagged" = "$commit" ] || die "tag v$version is $tagged, release/previous says $commit"
fi
[ "$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)" != "$version" ] \
  || die "Cargo.toml's version is still $version: the previous release's; bump it"

cache=${TIDINGS_UPGRADE_CACHE:-/var/cache/tidings-upgrade}
mkdir -p "$cache" 2>/dev/null && [ -w "$cache" ] || cache="${XDG_CACHE_HOME:-$HOME/.cache}/tidings-upgrade"
dir="$cache/$commit"
mkdir -p "$dir"
if [ ! -f "$dir/src/Cargo.toml" ]; then
  rm -rf "$dir/src.tmp" && mkdir -p "$dir/src.tmp"
  git archive "$commit" | tar -x -C "$dir/src.tmp"
  rm -rf "$dir/src" && mv "$dir/src.tmp" "$dir/src"
fi
echo "tests/upgrade: building release $version ($commit) in $dir"
start=$SECONDS
# Its own target directory: the previous release's dependencies never evict this build's.
(cd "$dir/src" && CARGO_TARGET_DIR="$dir/target" cargo build --locked --bin tidings)
echo "tests/upgrade: release $version built in $((SECONDS - start)) s"
# A copy, so that a build of the cache meanwhile (another run) cannot change it under the test.
export TIDINGS_PREVIOUS_BIN="$dir/tidings-$version"
cp "$dir/target/debug/tidings" "$TIDINGS_PREVIOUS_BIN.tmp.$$"
mv "$TIDINGS_PREVIOUS_BIN.tmp.$$" "$TIDINGS_PREVIOUS_BIN"
"$TIDINGS_PREVIOUS_BIN" --version

workspace=()
if [ -n "${TIDINGS_BIN:-}" ]; then
  export TIDINGS_TEST_BIN="$TIDINGS_BIN"
  # Under scripts/test.sh: the features its `cargo test --workspace` compiled with, so
  # nothing is compiled again.
  workspace=(--workspace)
fi
cargo test --locked "${workspace[@]}" --test upgrade -- --ignored
