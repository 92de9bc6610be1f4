"""Money under concurrency: 200 requests at once against credit for 50 worst cases.

Threads of one process, and two processes of 100 threads each: never a negative balance, at
most (here: exactly) 50 holds granted, and after settling every hold concurrently, the
balance is the credit minus the sum of the charges, to the micro-USD.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from billing_helpers import PRICE, SECRET, assert_ledger_consistent, make_customer, place_holds
from sqlalchemy import func, select

from avocado_llm.billing import Billing, Hold, charge_for
from avocado_llm.billing.schema import HoldRow, UsageEvent

WORST = charge_for(PRICE, 100, 200)
CREDITS = 50 * WORST

_WORKER = """
import json, sys
sys.path.insert(0, {here!r})
from billing_helpers import place_holds
from avocado_llm.billing import Billing
billing = Billing({url!r}, {secret!r})
info = billing.authenticate({key!r})
print("ready", flush=True)
sys.stdin.readline()  # "go": both processes start together
print(json.dumps(place_holds(billing, info, {n}, {prefix!r})), flush=True)
billing.close()
"""


def _in_processes(database_url: str, key: str, processes: int, n: int) -> list[dict | str]:
    here = str(Path(__file__).parent)
    workers = []
    for p in range(processes):
        code = _WORKER.format(
            here=here, url=database_url, secret=SECRET, key=key, n=n, prefix=f"p{p}"
        )
        workers.append(
            subprocess.Popen(
                [sys.executable, "-c", textwrap.dedent(code)],
                text=True,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
        )
    for w in workers:
        assert w.stdout is not None and w.stdout.readline().strip() == "ready"
    for w in workers:
        assert w.stdin is not None
        w.stdin.write("go\n")
        w.stdin.flush()
    results: list[dict | str] = []
    for w in workers:
        out, _ = w.communicate(timeout=60)
        assert w.returncode == 0
        results += json.loads(out)
    return results


@pytest.mark.parametrize("mode", ["threads", "processes"])
def test_200_concurrent_requests_never_overdraw(
    billing: Billing, database_url: str, mode: str
) -> None:
    customer = make_customer(billing, credits=CREDITS)
    seen_negative: list[int] = []
    done = threading.Event()

    def watch() -> None:  # samples the balance while the holds race
        while not done.wait(0.005):
            info = billing.account_info("acme")
            if info["balance"] < 0 or info["held"] < 0:
                seen_negative.append(info["balance"])

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        if mode == "threads":
            results = place_holds(billing, customer.info, 200, "t")
        else:
            results = _in_processes(database_url, customer.key, processes=2, n=100)
    finally:
        done.set()
        watcher.join()

    errors = [r for r in results if isinstance(r, str) and r != "refused"]
    assert errors == []
    holds = [Hold(**r) for r in results if isinstance(r, dict)]
    assert len(holds) == 50  # ≤ 50 is the guarantee; no spurious refusal makes it exactly 50
    assert results.count("refused") == 150
    assert seen_negative == []
    assert billing.balance("acme") == 0 and billing.account_info("acme")["held"] == CREDITS

    rng = random.Random(0)
    usage = {h.id: rng.randint(0, 200) for h in holds}
    with ThreadPoolExecutor(32) as pool:
        charges = list(pool.map(lambda h: billing.settle(h, 100, usage[h.id]), holds))
    assert charges == [charge_for(PRICE, 100, usage[h.id]) for h in holds]
    assert billing.balance("acme") == CREDITS - sum(charges)
    assert billing.account_info("acme")["held"] == 0
    with billing.engine.connect() as conn:
        assert conn.scalar(select(func.count()).where(HoldRow.status == "open")) == 0
        events = conn.execute(select(UsageEvent.request_id, UsageEvent.charge)).all()
    assert sorted(r for r, _ in events) == sorted(h.request_id for h in holds)
    assert sum(c for _, c in events) == sum(charges)
    assert_ledger_consistent(billing, "acme")
