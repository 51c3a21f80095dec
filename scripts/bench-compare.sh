#!/usr/bin/env bash
# Runs ferry-bench for two builds side by side, alternating A B A B so that the noise of a
# shared machine falls on both alike, and keeps every table in one log.
#
#   scripts/bench-compare.sh BASE_DIR NEW_DIR [ROUNDS] [BENCH ...]
#
# BASE_DIR and NEW_DIR each hold release binaries `ferryd`, `ferry` and `ferry-bench` (copy
# them out of target/release of each checkout; ferry-bench starts the ferryd beside it).
# ROUNDS (default 2) is how many times each build runs each bench. BENCH defaults to every
# benchmark: "submit", "submit --nodes 3", "events", "download", "shard", "fleet".
# The tables print as they come; compare the same rows of A and B.
set -euo pipefail

base=${1:?usage: bench-compare.sh BASE_DIR NEW_DIR [ROUNDS] [BENCH ...]}
new=${2:?usage: bench-compare.sh BASE_DIR NEW_DIR [ROUNDS] [BENCH ...]}
rounds=${3:-2}
shift $(($# < 3 ? $# : 3))
if (($# == 0)); then
    set -- "submit" "submit --nodes 3" "events" "download" "shard" "fleet"
fi

for dir in "$base" "$new"; do
    for bin in ferryd ferry ferry-bench; do
        [[ -x $dir/$bin ]] || { echo "missing $dir/$bin" >&2; exit 2; }
    done
done

for bench in "$@"; do
    for ((round = 1; round <= rounds; round++)); do
        for side in A B; do
            dir=$base
            [[ $side == B ]] && dir=$new
            printf '\n=== %s | round %d | %s (%s)\n' "$bench" "$round" "$side" "$dir"
            # shellcheck disable=SC2086 # the bench name carries its own arguments
            timeout 1800 "$dir/ferry-bench" $bench || echo "(exit $?)"
        done
    done
done
