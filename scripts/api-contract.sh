#!/usr/bin/env bash
# The HTTP API against its own OpenAPI document: starts one real ferryd (temporary data
# directory, loopback ports) and runs schemathesis (v4) on GET /v1/openapi.json with
# every check and every phase (examples, coverage, fuzzing, stateful), then generates a
# Python client from the document (openapi-python-client) and uses it against the same
# node (tests/contract/generated_client.py). Exits non-zero
# on any failure or error schemathesis reports. Bounded: a few examples per operation
# and a wall-clock limit (FERRY_CONTRACT_TIMEOUT seconds, default 240).
#
#     cargo build -p ferry-node --bins && scripts/api-contract.sh
#
# FERRY_BIN=DIR takes ferryd from DIR (default target/debug); FERRY_CONTRACT_EXAMPLES
# sets --max-examples (default 20), FERRY_CONTRACT_SEED the seed (default fixed, so a
# run can be repeated); extra arguments go to `schemathesis run` as they are.
#
# Settings and hooks: tests/contract/ (schemathesis.toml says where a check's default
# expectation does not fit, and why; ferry_hooks.py makes well-formed Idempotency-Keys
# unique, as clients do).
#
# The node is made harmless to fuzz: transfers are paused (`max_active_jobs = 0`, so no
# job ever connects anywhere or writes a file), private addresses are refused, and the
# token schemathesis uses is an administrator whose local files are confined to the
# temporary directory.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${FERRY_BIN:-target/debug}
examples=${FERRY_CONTRACT_EXAMPLES:-20}
seed=${FERRY_CONTRACT_SEED:-19}
limit=${FERRY_CONTRACT_TIMEOUT:-240}

if ! command -v schemathesis >/dev/null 2>&1; then
    echo "schemathesis is not installed: pip install schemathesis" >&2
    exit 2
fi
[ -x "$bin/ferryd" ] || { echo "no $bin/ferryd: cargo build -p ferry-node --bins" >&2; exit 2; }

work=$(mktemp -d)
pid=
cleanup() {
    if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
    if [ "${FERRY_CONTRACT_KEEP:-0}" = 1 ]; then echo "kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

token=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
mkdir -p "$work/files"
cat >"$work/ferryd.toml" <<TOML
data_dir = "$work/data"
[api]
listen = "127.0.0.1:0"
[[api.tokens]]
token = "$token"
principal = "contract"
role = "admin"
roots = ["$work/files"]
[peer]
listen = "127.0.0.1:0"
[transfer]
max_active_jobs = 0
refuse_private_addresses = true
TOML
"$bin/ferryd" --config "$work/ferryd.toml" >"$work/ferryd.log" 2>&1 &
pid=$!
for _ in $(seq 100); do [ -s "$work/data/api.addr" ] && break; sleep 0.1; done
[ -s "$work/data/api.addr" ] || { cat "$work/ferryd.log" >&2; echo "ferryd did not start" >&2; exit 1; }
base="http://$(cat "$work/data/api.addr")"
for _ in $(seq 100); do
    curl -fsS "$base/healthz" >/dev/null 2>&1 && break
    sleep 0.1
done

echo "schemathesis $(schemathesis --version | grep -oE '[0-9]+(\.[0-9]+)+') against $base"
status=0
export FERRY_CONTRACT_TOKEN="$token"
export PYTHONPATH="$PWD/tests/contract${PYTHONPATH:+:$PYTHONPATH}" SCHEMATHESIS_HOOKS=ferry_hooks
timeout --kill-after=10 "$limit" schemathesis --no-color \
    --config-file tests/contract/schemathesis.toml run "$base/v1/openapi.json" \
    --checks all \
    --phases examples,coverage,fuzzing,stateful \
    --max-examples "$examples" \
    --seed "$seed" \
    --workers 2 \
    --request-timeout 10 \
    --generation-database none \
    --report-dir "$work/report" \
    "$@" || status=$?
if [ "$status" = 124 ] || [ "$status" = 137 ]; then
    echo "schemathesis did not finish within ${limit}s" >&2
fi

# A client generated from the document (openapi-python-client, which reads OpenAPI
# 3.1; progenitor reads 3.0 only), used against the same node.
if [ "$status" = 0 ]; then
    if command -v openapi-python-client >/dev/null 2>&1; then
        curl -fsS "$base/v1/openapi.json" -o "$work/openapi.json"
        if openapi-python-client generate --path "$work/openapi.json" \
            --output-path "$work/client" --overwrite >"$work/generate.log" 2>&1; then
            FERRY_CONTRACT_URL="$base" FERRY_CONTRACT_DIR="$work/files" \
                PYTHONPATH="$work/client" python3 tests/contract/generated_client.py || status=$?
        else
            cat "$work/generate.log" >&2
            echo "openapi-python-client could not generate a client from the document" >&2
            status=1
        fi
    elif [ "${FERRY_REQUIRE_SCHEMATHESIS:-0}" = 1 ]; then
        echo "openapi-python-client is not installed: pip install openapi-python-client" >&2
        status=2
    else
        echo "SKIPPED the generated client: openapi-python-client is not installed"
    fi
fi
if ! kill -0 "$pid" 2>/dev/null; then
    echo "ferryd exited during the run; its log:" >&2
    tail -50 "$work/ferryd.log" >&2
    status=1
fi
exit "$status"
