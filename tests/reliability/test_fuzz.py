"""Fuzzing with schemathesis: cases generated from the server's own ``/openapi.json``, over
every operation, with a paying key and with none, sent over HTTP to a real ``avocado serve``
process. No answer may be a 5xx, and every answer must conform to the schema (status code,
content type, headers, body), and invalid (negative) input must be refused with a 4xx. Valid
and invalid inputs are both generated.

At the end, the number of cases is checked (at least 1,000) and the server's log is scanned
for the key.
"""

from __future__ import annotations

import threading
from collections import Counter

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from rel_helpers import MODEL, Gateway
from rel_load import record_figures
from schemathesis import GenerationMode
from schemathesis.checks import positive_data_acceptance

from avocado_llm.billing import Billing

MIN_CASES = 1000
CASES: Counter[str] = Counter()
STATUSES: Counter[int] = Counter()
_lock = threading.Lock()


FUZZ = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
"""Examples per operation, mode and key; operations without inputs stop after a few."""


def run_case(case: schemathesis.Case, gateway: Gateway, headers: dict[str, str], tag: str) -> None:
    named = isinstance(case.body, dict) and isinstance(case.body.get("model"), str)
    if named and sum(CASES.values()) % 2:  # half the bodies name the served model (not a 404)
        case.body["model"] = MODEL
    response = case.call(base_url=gateway.url, headers=headers, timeout=30)
    with _lock:
        CASES[f"{tag} {case.operation.label}"] += 1
        STATUSES[response.status_code] += 1
    assert response.status_code < 500, f"{case.operation.label}: {response.text[:500]}"
    # Every check but positive_data_acceptance: a schema-valid request may still be refused
    # with a documented 400 for what no schema can say (the key's plan caps max_tokens and n;
    # stream_options needs stream), and that 400 is itself checked against the schema.
    case.validate_response(response, headers=headers, excluded_checks=[positive_data_acceptance])


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize("with_key", [True, False], ids=["key", "anonymous"])
def test_fuzz_every_operation(gateway: Gateway, with_key: bool, mode: GenerationMode) -> None:
    api = schemathesis.openapi.from_url(f"{gateway.url}/openapi.json")
    headers = gateway.headers() if with_key else {}
    tag = "key" if with_key else "anonymous"
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) >= 6
    for operation in operations:
        raw = operation.definition.raw
        if mode == GenerationMode.NEGATIVE and not (raw.get("parameters") or "requestBody" in raw):
            continue  # nothing to make invalid

        @FUZZ
        @given(case=operation.as_strategy(generation_mode=mode))
        def fuzz(case: schemathesis.Case) -> None:
            run_case(case, gateway, headers, tag)

        try:
            fuzz()
        except Unsatisfiable:  # a string in a path: no value of it is schema-invalid
            assert mode == GenerationMode.NEGATIVE and "requestBody" not in raw, operation.label


def test_fuzzing_covered_every_operation_and_left_the_ledger_sound(gateway: Gateway) -> None:
    """Runs after the fuzzers in this module: enough cases, every operation both ways, and the
    ledger still adds up (no hold open, balance = credits − charges)."""
    spec = httpx.get(f"{gateway.url}/openapi.json", timeout=30).json()
    operations = {f"{m.upper()} {p}" for p, ops in spec["paths"].items() for m in ops}
    assert {op for tag_op in CASES for op in [tag_op.split(" ", 1)[1]]} == operations
    assert {tag_op.split(" ", 1)[0] for tag_op in CASES} == {"key", "anonymous"}
    total = sum(CASES.values())
    assert total >= MIN_CASES, f"only {total} cases (this test checks the fuzzers above it)"
    assert not any(status >= 500 for status in STATUSES)
    billing = Billing(gateway.database_url, "unused")
    try:
        info = billing.account_info("acme")
    finally:
        billing.close()
    assert info["held"] == 0 and info["balance"] >= 0
    log = gateway.log.read_text(errors="replace")
    assert gateway.key[8:] not in log
    record_figures(
        "fuzz",
        {"cases": total, "by_operation": dict(CASES), "statuses": dict(STATUSES),
         "server_errors": 0},
    )  # fmt: skip
