#!/usr/bin/env bash
# A longer nemesis run than CI's: FAULTS faults (default 400, about 80 of each kind:
# leader kill -9, follower kill -9, leader SIGSTOP, symmetric and one-way partitions of
# the leader) under three recording clients, then the checkers of tests/it/nemesis.rs.
# Prints the seed (FERRY_NEMESIS_SEED replays a schedule), the operation counts, the
# faults injected and the verdict. Needs root for the partitions (iptables).
#
#   scripts/nemesis.sh [FAULTS]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --workspace --all-targets --locked
FERRY_NEMESIS_FAULTS=${1:-400} cargo nextest run -p ferry-tests --profile long --no-capture \
    -E 'test(a_short_nemesis_run_keeps_every_guarantee)'
