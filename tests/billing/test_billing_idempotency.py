"""Idempotency-Key: a retry with the same body replays the stored answer, uncharged."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from billing_helpers import MODEL, assert_ledger_consistent, make_customer

from avocado_llm.billing import Billing, IdempotencyConflict, IdempotencyInProgress


def test_same_key_and_body_replays_the_stored_answer(billing: Billing) -> None:
    c = make_customer(billing)
    key_id = c.info.key_id
    assert billing.idempotent_response(key_id, "idem-1", "hash-a") is None
    hold = billing.hold(c.info, MODEL, 10, 20, "req-1")
    answer = b'{"id": "chatcmpl-1", "choices": []}'
    charge = billing.settle(hold, 10, 5, idempotency=("idem-1", "hash-a", answer))
    balance = billing.balance("acme")

    assert billing.idempotent_response(key_id, "idem-1", "hash-a") == answer
    with pytest.raises(IdempotencyConflict, match="different request body") as e:
        billing.idempotent_response(key_id, "idem-1", "hash-b")
    assert e.value.status == 409
    assert billing.idempotent_response("key_other", "idem-1", "hash-a") is None  # per API key
    assert billing.balance("acme") == balance  # replays cost nothing
    assert [u["charge"] for u in billing.usage("acme")] == [charge]


def test_a_second_settle_does_not_overwrite_the_answer(billing: Billing) -> None:
    c = make_customer(billing)
    hold = billing.hold(c.info, MODEL, 10, 20, "req-1")
    billing.settle(hold, 10, 5, idempotency=("idem-1", "hash-a", b"first"))
    billing.settle(hold, 10, 5, idempotency=("idem-1", "hash-a", b"second"))
    assert billing.idempotent_response(c.info.key_id, "idem-1", "hash-a") == b"first"


def test_a_claim_refuses_concurrent_retries_until_answered(billing: Billing) -> None:
    c = make_customer(billing)
    key_id = c.info.key_id
    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(_try_claim(billing, key_id), range(8)))
    assert outcomes.count("claimed") == 1 and outcomes.count("in progress") == 7
    with pytest.raises(IdempotencyInProgress):
        billing.idempotent_response(key_id, "idem-1", "hash-a")
    with pytest.raises(IdempotencyConflict):
        billing.claim_idempotency(key_id, "idem-1", "hash-b")

    hold = billing.hold(c.info, MODEL, 10, 20, "req-1")
    billing.settle(hold, 10, 5, idempotency=("idem-1", "hash-a", b"answer"))
    assert billing.claim_idempotency(key_id, "idem-1", "hash-a") == b"answer"

    assert billing.claim_idempotency(key_id, "idem-2", "hash-a") is None
    billing.abandon_idempotency(key_id, "idem-2")  # the request failed: a retry may run
    assert billing.claim_idempotency(key_id, "idem-2", "hash-a") is None
    assert billing.release_stale_holds() == 0  # start-up also drops unfinished claims …
    assert billing.claim_idempotency(key_id, "idem-2", "hash-a") is None
    assert billing.idempotent_response(key_id, "idem-1", "hash-a") == b"answer"  # … not answers
    assert_ledger_consistent(billing, "acme")


def test_records_are_kept_for_a_day(billing: Billing) -> None:
    c = make_customer(billing)
    hold = billing.hold(c.info, MODEL, 10, 20, "req-1")
    billing.settle(hold, 10, 5, idempotency=("idem-1", "hash-a", b"answer"))
    assert billing.purge_idempotency() == 0  # younger than 24 h: kept
    assert billing.purge_idempotency(older_than_s=0) == 1
    assert billing.idempotent_response(c.info.key_id, "idem-1", "hash-a") is None


def _try_claim(billing: Billing, key_id: str) -> Callable[[int], str]:
    def claim(_: int) -> str:
        try:
            return (
                "claimed" if billing.claim_idempotency(key_id, "idem-1", "hash-a") is None else "x"
            )
        except IdempotencyInProgress:
            return "in progress"

    return claim
