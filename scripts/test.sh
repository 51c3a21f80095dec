#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, the crypto-provider guard,
# every test (unit, openraft's storage suite, real ferryd processes) and doc tests.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}" RUST_BACKTRACE="${RUST_BACKTRACE:-1}"

step() { printf '\n== %s\n' "$*"; }

step "format"
cargo fmt --all -- --check

step "lints"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "ring is the only crypto provider"
if cargo tree --workspace --locked -e normal -i aws-lc-sys >/dev/null 2>&1; then
    echo "aws-lc-sys is in the dependency tree; Ferry builds with ring only" >&2
    cargo tree --workspace -e normal -i aws-lc-sys >&2
    exit 1
fi
echo "ok: no aws-lc-sys"

step "the previous format's ferryd, for the rolling-upgrade test"
if previous=$(scripts/previous-build.sh); then
    export FERRY_PREVIOUS_FERRYD="$previous"
    echo "ok: $previous"
else
    echo "not built: the rolling-upgrade test will skip"
fi

step "tests"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --locked --profile ci
else
    echo "(cargo-nextest not found: using cargo test)"
    cargo test --workspace --locked
fi

step "doc tests"
cargo test --workspace --locked --doc

step "all passed"
