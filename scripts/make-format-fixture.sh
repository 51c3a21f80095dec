#!/usr/bin/env bash
# Writes a small data directory in this build's format to tests/fixtures/format-<N>/,
# with the job list it holds (jobs.json), for the upgrade test (tests/it/upgrade.rs):
# every later build must open it and find the same jobs. Run it once per released
# format, with the build that writes that format:
#     cargo build --workspace && scripts/make-format-fixture.sh
# (FERRY_BIN=DIR takes ferryd and ferry from DIR.)
# The directory holds a snapshot and a log tail after it, so both paths are read.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${FERRY_BIN:-target/debug}
version=${FERRY_FORMAT:-$(grep -oP "pub const FORMAT_VERSION: u8 = \K[0-9]+" protocol/src/codec.rs)}
out=tests/fixtures/format-$version
work=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT

cat >"$work/ferryd.toml" <<TOML
data_dir = "$work/data"
[api]
listen = "127.0.0.1:0"
[peer]
listen = "127.0.0.1:0"
[raft]
snapshot_after_entries = 20
keep_entries_after_snapshot = 5
TOML
"$bin/ferryd" --config "$work/ferryd.toml" >"$work/ferryd.log" 2>&1 &
pid=$!
for _ in $(seq 100); do [ -s "$work/data/api.addr" ] && break; sleep 0.1; done
export FERRY_DATA_DIR="$work/data"
ferry() { "$bin/ferry" "$@"; }
sleep 1

ferry job create "fixture suspended download" --priority high >/dev/null
ferry job add-file "fixture suspended download" http://127.0.0.1:9/a.bin /tmp/ferry-fixture/a.bin
ferry job add-file "fixture suspended download" http://127.0.0.1:9/b.bin /tmp/ferry-fixture/b.bin --range 0:1024,4096:eof
ferry job create "fixture upload" --type upload >/dev/null
ferry job add-file "fixture upload" http://127.0.0.1:9/up /tmp/ferry-fixture/up.bin
ferry job create "fixture cancelled" >/dev/null
ferry job cancel "fixture cancelled"
for i in $(seq 1 30); do
    ferry job create "fixture bulk $i" --priority low >/dev/null
done
# A principal of the cluster (format 9 on), for builds whose CLI has tokens.
if ferry token --help >/dev/null 2>&1; then
    ferry token create fixture-user --role user >/dev/null
fi
ferry --json job list --all-users >"$work/jobs.json"

kill -TERM "$pid"
wait "$pid" || true
rm -rf "$out"
mkdir -p "$out"
cp "$work/data/raft-log.redb" "$work/data/state.redb" "$work/data/node.id" "$out/"
cp -r "$work/data/state.snapshots" "$out/"
for f in ca.pem ca.key node.pem node.key secret.key join.token admin.token; do
    [ -e "$work/data/$f" ] && cp "$work/data/$f" "$out/"
done
cp "$work/jobs.json" "$out/jobs.json"
# The commit of the build that wrote it (scripts/previous-build.sh builds it again for
# the rolling-upgrade test): the commit ferryd --version names.
"$bin/ferryd" --version | grep -oP 'commit \K[0-9a-f]+' | xargs git rev-parse >"$out/BUILD"
echo "wrote $out ($(du -sh "$out" | cut -f1)), $(grep -o '"id"' "$out/jobs.json" | wc -l) ids in jobs.json"
