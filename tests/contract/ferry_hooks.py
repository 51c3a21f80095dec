"""Schemathesis hooks for scripts/api-contract.sh (loaded through SCHEMATHESIS_HOOKS=ferry_hooks).

Idempotency-Key: the API refuses (400) a key that the same principal already used for
a different request; a client sends a fresh key per request (docs/api.md). Schemathesis
draws keys from a small space ("0", "00...") and reuses them across different
requests, so every well-formed key it generates is made unique here. Malformed keys
(empty, too long, not printable ASCII) are left as generated, so the server's refusal
of them is still tested; reuse itself is tested by tests/it/idempotency.rs.
"""

import re
import uuid

import schemathesis

WELL_FORMED = re.compile(r"^[!-~]{1,128}$")


@schemathesis.hook
def before_call(context, case, **kwargs):
    headers = case.headers or {}
    for name in list(headers):
        if name.lower() == "idempotency-key" and isinstance(headers[name], str):
            if WELL_FORMED.match(headers[name]):
                headers[name] = uuid.uuid4().hex
