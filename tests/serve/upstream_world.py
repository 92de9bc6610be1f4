"""A real ``avocado serve --upstream`` process in front of the reliability tests' fake upstream
(``tests/reliability/fake_upstream.py``, answering as vLLM does), on a SQLite ledger: what the
tool-calling and structured-output tests call with the official ``openai`` client.

    with upstream_world(tmp_path) as world:   # world.client(), world.billing, world.new_key()
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import openai

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reliability"))

from rel_helpers import (
    MODEL,
    PRICE,
    SECRET,
    FakeUpstream,
    ServerProcess,
    free_port,
    prepare_ledger,
    running,
)
from serve_helpers import World

from avocado_llm.billing import MICRO, Billing, charge_for

__all__ = ["MODEL", "SECRET", "FakeUpstream", "World", "charge", "prepare_ledger",
           "upstream_world"]  # fmt: skip


def charge(prompt_tokens: int, completion_tokens: int) -> int:
    """What the fake model's price says a request with this usage costs."""
    return charge_for(PRICE, prompt_tokens, completion_tokens)


@contextmanager
def upstream_world(root: Path) -> Iterator[World]:
    """The fake upstream and one ``avocado serve --upstream`` process (the real command) for
    it; account ``acme`` has $100 and ``world.key`` (the default plan)."""
    url = f"sqlite:///{root / 'ledger.db'}"
    prepare_ledger(url, 100 * MICRO)
    billing = Billing(url, SECRET)
    key_id, key = billing.create_key("acme")
    with FakeUpstream(delay_s=0) as upstream:
        server = ServerProcess(None, free_port(), upstream.url, url, root / "server.log")
        with running([server]):
            world = World(f"{server.url}/v1", billing, MODEL, key, key_id)
            try:
                yield world
            finally:
                for client in world.clients:
                    client.close()
                server.stop()
    billing.close()


def usage_events(world: World) -> list[dict[str, Any]]:
    return world.billing.usage(world.account)


def error_of(e: openai.APIStatusError) -> dict[str, Any]:
    body = e.body if isinstance(e.body, dict) else {}
    return dict(body.get("error", body))
