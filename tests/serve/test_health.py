"""``GET /health`` says where the watermark is applied and, in upstream mode, whether the last
probe found vLLM's watermark processor, and when; public, it names no key and not the secret.
The upstream is ``tests/reliability/fake_upstream.py`` behind ``test_upstream_probe``'s switch
(the processor on or off)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from serve_helpers import SECRET, World, run_server
from test_upstream_probe import MODEL, Switchable, closing, ledger, wait_for

from avocado_llm.serve import ServeSettings, create_app
from avocado_llm.serve.upstream import UpstreamEngine


def health(base_url: str) -> tuple[dict[str, Any], str]:
    """``/health``'s JSON and its raw text, for the server whose /v1 URL is ``base_url``."""
    answer = httpx.get(base_url.removesuffix("/v1") + "/health", timeout=30)
    assert answer.status_code == 200
    return answer.json(), answer.text


def probed_at(body: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(body["watermark_probe"]["at"])


def test_the_in_process_engine_marks_in_process(world: World) -> None:
    body, text = health(world.base_url)
    assert body == {"status": "ok", "model": world.model, "watermark": "in-process"}
    assert world.key not in text and SECRET not in text


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[tuple[str, Switchable, str]]:
    """A gateway in front of the switchable fake (processor on at the start), probing every
    0.1 s; yields its /v1 URL, the fake, and a key of the ledger."""
    upstream = Switchable()
    url, billing = ledger(tmp_path)
    _, key = billing.create_key("acme")
    with run_server(upstream) as upstream_url:  # type: ignore[arg-type]
        engine = UpstreamEngine(upstream_url, model_name=MODEL, probe_every_s=0.1)
        settings = ServeSettings(upstream_url=upstream_url, model_name=MODEL, database_url=url,
                                 secret=SECRET)  # fmt: skip
        app = closing(create_app(settings, engine=engine, billing=billing), engine)
        with run_server(app) as base_url:  # type: ignore[arg-type]
            yield base_url, upstream, key
    billing.close()


def test_health_follows_what_the_probe_finds_upstream(
    gateway: tuple[str, Switchable, str],
) -> None:
    base_url, upstream, key = gateway
    started = datetime.now(UTC)
    body, text = health(base_url)
    assert body["status"] == "ok" and body["model"] == MODEL
    assert body["watermark"] == "upstream-processor"
    assert body["watermark_probe"]["processor"] == "loaded"
    # the start-up probe's time, in UTC, at most a few probe periods old
    first = probed_at(body)
    assert first.tzinfo is not None and first.utcoffset() == timedelta(0)
    assert first > started - timedelta(minutes=5)
    assert key not in text and SECRET not in text

    upstream.processor = False  # vLLM restarted without --logits-processors
    wait_for(
        lambda: health(base_url)[0]["watermark_probe"]["processor"] == "missing",
        "/health never said the processor was missing",
    )
    missing = probed_at(health(base_url)[0])
    assert missing > first
    upstream.processor = True
    wait_for(
        lambda: health(base_url)[0]["watermark_probe"]["processor"] == "loaded",
        "/health never said the processor was back",
    )
    assert probed_at(health(base_url)[0]) > missing


def test_health_says_off_when_no_watermark_goes_upstream(tmp_path: Path) -> None:
    upstream = Switchable()
    upstream.processor = False
    url, billing = ledger(tmp_path)
    with run_server(upstream) as upstream_url:  # type: ignore[arg-type]
        settings = ServeSettings(upstream_url=upstream_url, model_name=MODEL, database_url=url,
                                 secret=SECRET, upstream_watermark=False)  # fmt: skip
        with run_server(create_app(settings, billing=billing)) as base_url:
            body, _ = health(base_url)
    billing.close()
    assert body == {"status": "ok", "model": MODEL, "watermark": "off"}
    assert upstream.probes == 0


def test_health_says_unknown_while_the_upstream_does_not_answer(tmp_path: Path) -> None:
    """vLLM still loading (nothing listens): the gateway starts, and /health says the probe
    got no answer, with its time."""
    url, billing = ledger(tmp_path)
    settings = ServeSettings(upstream_url="http://127.0.0.1:9/v1", model_name=MODEL,
                             database_url=url, secret=SECRET)  # fmt: skip
    with run_server(create_app(settings, billing=billing)) as base_url:
        body, _ = health(base_url)
    billing.close()
    assert body["watermark"] == "upstream-processor"
    assert body["watermark_probe"]["processor"] == "unknown"
    assert probed_at(body) <= datetime.now(UTC)
