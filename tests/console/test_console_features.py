"""The console's key page shows what each key's plan allows — tool calling and structured
outputs among the rest — and what keys made there may have (a real browser, as in
``test_console_browser.py``)."""

from __future__ import annotations

from console_helpers import Console, shot
from playwright.sync_api import BrowserContext

from avocado_llm.billing import Plan


def test_the_key_page_shows_tools_and_structured_outputs(
    console: Console, context: BrowserContext
) -> None:
    billing = console.billing
    plain_id, _ = billing.create_key("acme")
    text_id, _ = billing.create_key("acme", plan=Plan(name="text-only", tools=False,
                                                      structured_outputs=False))  # fmt: skip
    page = console.sign_in(context, "acme")
    page.click("nav >> text=API keys")
    plain = page.locator(f"tr[data-key-id='{plain_id}'] .features").inner_text()
    assert plain == "tools yes, structured outputs yes"
    text_only = page.locator(f"tr[data-key-id='{text_id}'] .features").inner_text()
    assert text_only == "tools no, structured outputs no"
    assert "tools yes, structured outputs yes" in page.inner_text("#key-limits")
    shot(page, "keys-features")
    assert not console.problems, console.problems
