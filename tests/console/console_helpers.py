"""The console tests' world: a real server on loopback (uvicorn in a thread, the in-process
engine over zoo/qwen-tiny), a real SQLite ledger, and Debian's Chromium driven by Playwright.

Screenshots go to ``test-artifacts/console/`` (gitignored); ``AVOCADO_UPDATE_DOCS=1`` also
refreshes ``docs/console-usage.png`` for the README.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page

from avocado_llm.billing import Billing, Price

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "console"
DOCS = ROOT / "docs"
CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SECRET = "console-test-secret-not-for-production"
MODEL = "qwen-tiny"
PRICE = Price(input_per_1m=1_000_000, output_per_1m=2_000_000, per_request=10)
EVIL_MODEL = '<img src=x onerror="window.__pwned=2"><script>window.__pwned=1</script>m'
EVIL_ACCOUNT = "<script>window.__pwned=3</script>evil"
PASSWORDS = {
    "acme": "acme-console-password",
    "globex": "globex-console-password",
    "evil": "evil-console-password!",
    "ops": "operator-console-password",
}


@dataclass
class Console:
    """The running server and its ledger."""

    origin: str
    billing: Billing
    database_url: str
    browser: Browser
    problems: list[str] = field(default_factory=list)
    """JavaScript errors (console errors, uncaught exceptions) seen on any page."""

    @property
    def base_url(self) -> str:
        return f"{self.origin}/v1"

    def url(self, path: str) -> str:
        return f"{self.origin}/console{path}"

    def context(self) -> BrowserContext:
        context = self.browser.new_context(
            viewport={"width": 1280, "height": 900}, accept_downloads=True
        )

        def watch(page: Page) -> None:
            def on_console(message: ConsoleMessage) -> None:
                if message.type == "error":
                    self.problems.append(f"{page.url}: {message.text}")

            page.on("console", on_console)
            page.on("pageerror", lambda error: self.problems.append(f"{page.url}: {error}"))

        context.on("page", watch)
        return context

    def sign_in(self, context: BrowserContext, username: str) -> Page:
        page = context.new_page()
        page.goto(self.url("/login"))
        page.fill("input[name=username]", username)
        page.fill("input[name=password]", PASSWORDS[username])
        page.click("button[type=submit]")
        page.wait_for_load_state("networkidle")
        assert "/login" not in page.url, page.inner_text("main")
        return page


def shot(page: Page, name: str) -> Path:
    """Save a full-page screenshot as a test artefact."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    if name == "usage-range" and os.environ.get("AVOCADO_UPDATE_DOCS") == "1":
        DOCS.mkdir(exist_ok=True)
        page.screenshot(path=str(DOCS / "console-usage.png"), full_page=False)
    return path


def usd_text(micro: int) -> str:
    whole, frac = divmod(micro, 1_000_000)
    return f"${whole}.{frac:06d}"


def money(text: str) -> int:
    """``$4.999873`` → 4_999_873."""
    match = re.fullmatch(r"\s*\$(\d+)\.(\d{6})\s*", text)
    assert match, f"not an amount: {text!r}"
    return int(match[1]) * 1_000_000 + int(match[2])
