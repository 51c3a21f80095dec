#!/usr/bin/env bash
# Crosses each Raft failpoint with a crash ROUNDS times (default 50) under keyed writers,
# and checks after each restart that no acknowledged write was lost and no retried write
# applied twice. Prints the count. Takes about 10 s per round on a laptop.
#
#   scripts/failpoints.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --workspace --all-targets --locked
FERRY_FAILPOINT_ROUNDS=${1:-50} cargo nextest run -p ferry-tests --profile long --no-capture \
    -E 'test(a_crash_at_any_raft_failpoint_loses_no_acknowledged_write)'
