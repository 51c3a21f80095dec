#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ for a set time, one after the other, and prints
# one table: target, seconds run, executions, corpus size, crashes. Exits non-zero if
# any target crashed (or failed to run). See fuzz/README.md.
#
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#   SECONDS_PER_TARGET  default 600
#   TARGET              default: every target (codec peer upload range api_json)
# Environment:
#   FUZZ_NICE     nice level of the fuzzing processes (default 10; the machine is shared)
#   FUZZ_ARGS     extra libFuzzer arguments, e.g. "-max_len=65536"
#
# cargo fuzz needs nightly compiler flags (-Z sanitizer, coverage passes); on a stable
# toolchain RUSTC_BOOTSTRAP=1 allows them. Build: release, debug assertions and overflow
# checks on (-a), no sanitizer (-s none: the crates under test forbid unsafe code, and
# it runs several times faster).
set -euo pipefail

seconds="${1:-600}"
shift || true
targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
    targets=(codec peer upload range api_json)
fi
nice_level="${FUZZ_NICE:-10}"

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz is missing: cargo install cargo-fuzz --locked" >&2
    exit 2
fi

echo "== building the fuzz targets" >&2
nice -n "$nice_level" cargo fuzz build -s none -a >&2
triple="$(rustc -vV | sed -n 's/^host: //p')"
bin_dir="fuzz/target/$triple/release"

# Seeds from real values, in this build's format: fuzz/target/seeds/<target>/.
echo "== writing seed inputs" >&2
rm -rf fuzz/target/seeds
nice -n "$nice_level" cargo run -q --locked --manifest-path fuzz/Cargo.toml \
    -p ferry-fuzz-seeds -- fuzz/target/seeds >&2

rows=()
failed=0
for target in "${targets[@]}"; do
    work="fuzz/target/corpus/$target"      # grows while fuzzing; not committed
    seeds="fuzz/target/seeds/$target"      # generated above
    committed="fuzz/corpus/$target"        # small, committed: regressions and seeds
    artifacts="fuzz/artifacts/$target"
    log="fuzz/target/logs/$target.log"
    mkdir -p "$work" "$seeds" "$committed" "$artifacts" "$(dirname "$log")"
    dict=()
    if [ -f "fuzz/dict/$target.dict" ]; then
        dict=("-dict=fuzz/dict/$target.dict")
    fi
    before="$(find "$artifacts" -type f | wc -l)"
    echo "== fuzzing $target for ${seconds}s (log: $log)" >&2
    start="$(date +%s)"
    status=0
    # shellcheck disable=SC2086 # FUZZ_ARGS is a list of arguments
    nice -n "$nice_level" "$bin_dir/$target" "$work" "$seeds" "$committed" \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="$artifacts/" "${dict[@]}" ${FUZZ_ARGS:-} >"$log" 2>&1 || status=$?
    ran=$(($(date +%s) - start))
    execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
    if [ -z "$execs" ]; then
        execs="$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$log" | tail -1)"
    fi
    corpus="$(find "$work" -type f | wc -l)"
    crashes=$(($(find "$artifacts" -type f | wc -l) - before))
    if [ "$status" -ne 0 ] && [ "$crashes" -eq 0 ]; then
        crashes="?"   # it stopped abnormally without writing an input: see the log
    fi
    if [ "$status" -ne 0 ] || [ "$crashes" != 0 ]; then
        failed=1
        grep -m1 -A4 -E "panicked at|ERROR: libFuzzer" "$log" >&2 || true
    fi
    rows+=("$(printf '%-10s %8s %14s %10s %8s' "$target" "$ran" "${execs:-?}" "$corpus" "$crashes")")
done

printf '%-10s %8s %14s %10s %8s\n' target seconds executions corpus crashes
for row in "${rows[@]}"; do
    echo "$row"
done
if [ "$failed" -ne 0 ]; then
    echo "crash inputs are under fuzz/artifacts/<target>/; reproduce one with:" >&2
    echo "  RUSTC_BOOTSTRAP=1 cargo fuzz run -s none -a <target> <file>" >&2
    exit 1
fi
