"""Fixtures of the console tests: one in-process engine over zoo/qwen-tiny, one server with a
real SQLite ledger and one headless Chromium for the session; a fresh browser context (its own
cookies) per test."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from console_helpers import (
    CHROMIUM,
    EVIL_ACCOUNT,
    EVIL_MODEL,
    FLAGS,
    MODEL,
    PASSWORDS,
    PRICE,
    SECRET,
    Console,
)
from playwright.sync_api import BrowserContext, sync_playwright

from avocado_llm.billing import MICRO, Billing
from avocado_llm.billing.key_limits import KeyLimits
from avocado_llm.serve import ServeSettings, create_app
from avocado_llm.serve.background import serve_in_thread
from avocado_llm.serve.local_engine import LocalEngine


@pytest.fixture(scope="session")
def console_engine(zoo_dir: Path) -> Iterator[LocalEngine]:
    threads = torch.get_num_threads()
    engine = LocalEngine(zoo_dir / MODEL, model_name=MODEL, batch_wait_ms=5, threads=1)
    yield engine
    asyncio.run(engine.aclose())
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def console(
    console_engine: LocalEngine, tmp_path_factory: pytest.TempPathFactory, zoo_dir: Path
) -> Iterator[Console]:
    """A server with accounts acme ($5), globex ($3), an account named with a <script>, an
    operator, and a second priced model whose name holds a <script>.

    Per module, not per session: while Playwright's sync API is open it keeps an event loop
    running in the main thread, and every later test that calls ``asyncio.run`` would fail."""
    assert CHROMIUM.is_file(), f"Chromium is missing at {CHROMIUM}: `apt-get install -y chromium`"
    db = tmp_path_factory.mktemp("console") / "ledger.db"
    url = f"sqlite:///{db}"
    billing = Billing(url, SECRET)
    billing.migrate()
    billing.set_price(MODEL, PRICE.input_per_1m, PRICE.output_per_1m, PRICE.per_request)
    billing.set_price(EVIL_MODEL, 3_000_000, 4_000_000, 0)
    billing.create_account("acme", 5 * MICRO)
    billing.create_account("globex", 3 * MICRO)
    billing.create_account(EVIL_ACCOUNT, 1 * MICRO)
    for account in ("acme", "globex", EVIL_ACCOUNT):  # what keys made in the console may do
        billing.set_account_key_limits(account, KeyLimits())
    billing.create_console_user("acme", PASSWORDS["acme"], account="acme")
    billing.create_console_user("globex", PASSWORDS["globex"], account="globex")
    billing.create_console_user("evil", PASSWORDS["evil"], account=EVIL_ACCOUNT)
    billing.create_console_user("ops", PASSWORDS["ops"], operator=True)
    settings = ServeSettings(
        model_dir=zoo_dir / MODEL, model_name=MODEL, database_url=url, secret=SECRET
    )
    app = create_app(settings, engine=console_engine, billing=billing)
    with serve_in_thread(app) as origin, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS, headless=True)
        try:
            yield Console(origin, billing, url, browser)
        finally:
            browser.close()
    billing.close()


@pytest.fixture
def context(console: Console) -> Iterator[BrowserContext]:
    context = console.context()
    yield context
    context.close()
