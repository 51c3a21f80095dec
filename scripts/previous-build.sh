#!/usr/bin/env bash
# Builds the ferryd of the previous format (the commit in the newest
# tests/fixtures/format-N/BUILD) in target/previous/, for the rolling-upgrade test
# (tests/it/upgrade.rs), and prints its path. Fails, saying why, when the commit is not
# in this clone (a shallow one).
set -euo pipefail
cd "$(dirname "$0")/.."
newest=$(ls -d tests/fixtures/format-* | sort -t- -k2 -n | tail -1)
commit=$(cat "$newest/BUILD")
if ! git cat-file -e "$commit^{commit}" 2>/dev/null; then
    echo "commit $commit (of $newest) is not in this clone" >&2
    exit 1
fi
dir=$PWD/target/previous
bin=$dir/target/debug/ferryd
if [ -x "$bin" ] && [ "$(cat "$dir/built" 2>/dev/null)" = "$commit" ]; then
    echo "$bin"
    exit 0
fi
rm -rf "$dir/src"
git worktree prune
git worktree add --force --detach "$dir/src" "$commit" >&2
# A target directory of its own: sharing one between checkouts mixes their outputs.
(cd "$dir/src" && CARGO_TARGET_DIR="$dir/target" cargo build --locked -q -p ferry-node --bin ferryd >&2)
git worktree remove --force "$dir/src"
echo "$commit" >"$dir/built"
echo "$bin"
