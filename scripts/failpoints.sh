#!/usr/bin/env bash
# Crosses every failpoint with a crash ROUNDS times (default 50) and checks after each
# restart what its test guarantees: under keyed writers no acknowledged write lost and
# no retried write applied twice (raft.log.before_ack, raft.apply, raft.snapshot.build,
# raft.vote.save, raft.snapshot.install), the downloaded file byte-identical at its name
# (chunk.before_fsync, complete.before_rename), the uploaded file whole
# (upload.fragment.before_ack), the event stream whole and in order (events.send).
# Prints the counts.
#
#   scripts/failpoints.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --workspace --all-targets --locked
FERRY_FAILPOINT_ROUNDS=${1:-50} cargo nextest run -p ferry-tests --profile long --no-capture \
    -E 'test(/a_crash_at_any_raft_failpoint|a_crash_saving_a_vote_or_installing|a_crash_at_a_transfer_failpoint|a_server_crash_before_a_fragments_answer|a_crash_while_sending_an_event/)'
