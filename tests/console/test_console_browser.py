"""The console in a real browser (headless Debian Chromium via Playwright) against a real
server and ledger: a customer signs in, sees the balance, creates a key, calls the API with
the ``openai`` client, sees the call in usage and the balance drop by its charge, downloads a
statement that reconciles to the ledger, revokes the key; an operator watches traffic, tops up
an account with a reason, and sees keys, prices and holds. No JavaScript error on any page;
a screenshot of every page goes to test-artifacts/console/."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta

import openai
import pytest
from console_helpers import ARTIFACTS, MODEL, PRICE, Console, money, shot, usd_text
from playwright.sync_api import BrowserContext, Page
from sqlalchemy import update

from avocado_llm.billing import MICRO, KeyInfo, Plan, charge_for
from avocado_llm.billing.schema import LedgerEntry, UsageEvent
from avocado_llm.billing.statements import statement_csv
from avocado_llm.cli import main as avocado


def _chart_drawn(page: Page, canvas_id: str) -> bool:
    return bool(
        page.evaluate(
            "(id) => { const c = window.Chart && Chart.getChart(document.getElementById(id));"
            " return !!c && c.data.labels.length > 0; }",
            canvas_id,
        )
    )


def _download(page: Page, selector: str) -> tuple[str, str]:
    with page.expect_download() as info:
        page.click(selector)
    download = info.value
    path = download.path()
    assert path is not None
    return download.suggested_filename, path.read_text(encoding="utf-8")


def test_customer_journey(
    console: Console, context: BrowserContext, capsys: pytest.CaptureFixture[str]
) -> None:
    billing = console.billing
    page = console.sign_in(context, "acme")
    assert page.url == console.url("/")
    start_balance = billing.balance("acme")
    assert money(page.inner_text("#balance")) == start_balance
    shot(page, "overview-before")

    # create a key in the console: shown once
    page.click("nav >> text=API keys")
    page.check(f"input[name=models][value='{MODEL}']")
    page.fill("input[name=rpm]", "120")
    page.click("#create-key button[type=submit]")
    key = page.inner_text("#new-key-value").strip()
    assert key.startswith("avk_")
    shot(page, "keys-created")
    key_id = next(
        k["id"] for k in billing.api_keys() if key.startswith(k["prefix"]) and k["rpm"] == 120
    )
    row = page.locator(f"tr[data-key-id='{key_id}']")
    assert "active" in row.inner_text() and MODEL in row.inner_text()
    page.reload()  # a reload (a GET) never shows the key again
    assert page.locator("#new-key-value").count() == 0
    assert key not in page.content()

    # one paid call with the official client
    client = openai.OpenAI(base_url=console.base_url, api_key=key, max_retries=0)
    answer = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "What is 2 plus 3?"}], max_tokens=8
    )
    assert answer.usage is not None
    usage = answer.usage
    charge = charge_for(PRICE, usage.prompt_tokens, usage.completion_tokens)
    assert billing.balance("acme") == start_balance - charge

    # the overview shows the drop and the request
    page.click("nav >> text=Overview")
    assert money(page.inner_text("#balance")) == start_balance - charge
    assert page.inner_text("#balance") == usd_text(start_balance - charge)
    recent = page.inner_text("#recent")
    assert answer.id.removeprefix("chatcmpl-") in recent or MODEL in recent
    first_row = page.locator("#recent tbody tr").first.inner_text()
    assert MODEL in first_row and usd_text(charge) in first_row
    shot(page, "overview")

    # usage: chart drawn by Chart.js, table, CSV
    page.click("nav >> text=Usage")
    assert _chart_drawn(page, "chart-tokens") and _chart_drawn(page, "chart-spend")
    today = datetime.now(UTC).date().isoformat()
    table = page.inner_text("#usage-table")
    assert today in table and MODEL in table
    events = [e for e in billing.usage("acme") if e["created_at"].startswith(today)]
    model_events = [e for e in events if e["model"] == MODEL]
    tokens = sum(e["prompt_tokens"] + e["completion_tokens"] for e in events)
    assert page.inner_text("#usage-tokens").replace(",", "") == str(tokens)
    assert money(page.inner_text("#usage-spend")) == sum(e["charge"] for e in events)
    shot(page, "usage")
    name, text = _download(page, "#usage-csv")
    assert name.endswith(".csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    mine = next(r for r in rows if r["day"] == today and r["model"] == MODEL)
    assert int(mine["requests"]) == len(model_events)
    assert int(mine["charge_micro"]) == sum(e["charge"] for e in model_events)
    assert int(mine["completion_tokens"]) == sum(e["completion_tokens"] for e in model_events)

    # statements: HTML, CSV and JSON, the same numbers as the ledger and `avocado admin`
    month = datetime.now(UTC).strftime("%Y-%m")
    page.click("nav >> text=Statements")
    ledger = billing.statement("acme", month)
    assert money(page.inner_text("#st-closing")) == ledger["closing"]
    assert money(page.inner_text("#st-charges")) == ledger["charges"]
    info = billing.account_info("acme")
    assert ledger["closing"] == info["balance"] + info["held"]
    assert ledger["opening"] + ledger["credits"] - ledger["charges"] == ledger["closing"]
    shot(page, "statement")
    pdf = page.pdf(format="A4")  # "print to PDF": the print stylesheet drops the navigation
    assert pdf.startswith(b"%PDF")
    (ARTIFACTS / "statement.pdf").write_bytes(pdf)
    page.emulate_media(media="print")
    assert not page.locator("header.top").is_visible() and page.locator("#statement").is_visible()
    page.emulate_media(media="screen")
    _, downloaded_json = _download(page, "#statement-json")
    assert json.loads(downloaded_json) == ledger
    _, downloaded_csv = _download(page, "#statement-csv")
    assert downloaded_csv == statement_csv(ledger)
    capsys.readouterr()
    code = avocado(["admin", "--database-url", console.database_url, "statement",
                    "--account", "acme", "--month", month, "--format", "csv"])  # fmt: skip
    assert code == 0
    assert capsys.readouterr().out == downloaded_csv
    lines = list(csv.DictReader(io.StringIO(downloaded_csv)))
    assert int(lines[-1]["balance_micro"]) == ledger["closing"]
    assert sum(int(r["amount_micro"]) for r in lines[1:-1]) == ledger["closing"] - ledger["opening"]

    # prices
    page.click("nav >> text=Prices")
    prices = page.inner_text("#prices")
    assert MODEL in prices and usd_text(PRICE.output_per_1m) in prices
    shot(page, "prices")

    # revoke the key in the console: the API refuses it at once
    page.click("nav >> text=API keys")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click(f"tr[data-key-id='{key_id}'] button:has-text('Revoke')")
    page.wait_for_url(console.url("/keys"))
    assert "revoked" in page.locator(f"tr[data-key-id='{key_id}']").inner_text()
    shot(page, "keys-revoked")
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "again"}], max_tokens=4
        )
    client.close()

    # sign out: the session is gone
    page.click("text=Sign out")
    page.wait_for_url("**/console/login")
    page.goto(console.url("/"))
    assert "/console/login" in page.url
    assert not console.problems, console.problems


def test_usage_per_day_and_model_over_a_range(console: Console, context: BrowserContext) -> None:
    """Usage spread over days and two models is charted and tabled per day and model, and the
    range picker narrows it. (Events are placed through the ledger, then dated back.)"""
    billing = console.billing
    billing.create_account("initech", 20 * MICRO)
    billing.create_console_user("initech", "initech-console-password", account="initech")
    billing.set_price("avocado-large", 2_000_000, 6_000_000, 0)
    key_id, _ = billing.create_key("initech")
    account_id = billing.account_info("initech")["id"]
    key = KeyInfo(key_id, account_id, "initech", None, None, None, Plan())
    today = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    expected: dict[tuple[str, str], tuple[int, int]] = {}
    for day in range(14):
        for model, calls in ((MODEL, 1 + day % 3), ("avocado-large", day % 2)):
            for call in range(calls):
                request_id = f"req-{day}-{model}-{call}"
                hold = billing.hold(key, model, 40 + day, 64, request_id)
                charged = billing.settle(hold, 40 + day, 10 + 3 * day)
                when = today - timedelta(days=13 - day)
                with billing.engine.begin() as conn:
                    conn.execute(update(UsageEvent).where(UsageEvent.request_id == request_id)
                                 .values(created_at=when))  # fmt: skip
                    conn.execute(update(LedgerEntry).where(LedgerEntry.hold_id == hold.id)
                                 .values(created_at=when))  # fmt: skip
                k = (when.date().isoformat(), model)
                tokens, spent = expected.get(k, (0, 0))
                expected[k] = (tokens + 50 + 4 * day, spent + charged)

    page = context.new_page()
    page.goto(console.url("/login"))
    page.fill("input[name=username]", "initech")
    page.fill("input[name=password]", "initech-console-password")
    page.click("button[type=submit]")
    first = (today - timedelta(days=13)).date().isoformat()
    page.goto(console.url(f"/usage?start={first}&end={today.date().isoformat()}"))
    rows = page.locator("#usage-table tbody tr").all_inner_texts()
    assert len(rows) == len(expected)
    for text in rows:
        day, model, _requests, prompt, completion, spend = text.split("\t")
        tokens, spent = expected[(day, model)]
        assert int(prompt.replace(",", "")) + int(completion.replace(",", "")) == tokens
        assert money(spend) == spent
    chart = page.evaluate(
        "() => { const c = Chart.getChart(document.getElementById('chart-tokens'));"
        " return {labels: c.data.labels, sets: c.data.datasets.map(d => [d.label, d.data])}; }"
    )
    assert len(chart["labels"]) == 14
    for label, data in chart["sets"]:
        for day, value in zip(chart["labels"], data, strict=True):
            assert value == expected.get((day, label), (0, 0))[0]
    shot(page, "usage-range")  # also the README's picture (AVOCADO_UPDATE_DOCS=1)

    # a narrower range: only its days
    last3 = (today - timedelta(days=2)).date().isoformat()
    page.fill("input[name=start]", last3)
    page.click("form.inline button[type=submit]")
    page.wait_for_load_state("networkidle")
    days = {t.split("\t")[0] for t in page.locator("#usage-table tbody tr").all_inner_texts()}
    assert days == {(today - timedelta(days=d)).date().isoformat() for d in range(3)}
    assert not console.problems, console.problems


def test_operator_console(console: Console, context: BrowserContext) -> None:
    billing = console.billing
    _, key = billing.create_key("globex")
    client = openai.OpenAI(base_url=console.base_url, api_key=key, max_retries=0)
    client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
    )
    with pytest.raises(openai.NotFoundError):  # an error the dashboard counts (404)
        client.chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "Hi"}], max_tokens=4
        )
    client.close()

    page = console.sign_in(context, "ops")
    assert page.url == console.url("/admin")
    assert int(page.inner_text("#rpm").replace(",", "")) >= 2
    rates = page.inner_text("#rates")
    assert rates.strip()
    assert page.evaluate("() => !!Chart.getChart(document.getElementById('chart-rates'))")
    # the same counter as /metrics: every answered API request is in both
    metrics = page.request.get(f"{console.origin}/metrics").text()
    api_total = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("avocado_requests_total{") and 'endpoint="console_' not in line
    )
    assert api_total >= int(page.inner_text("#rpm").replace(",", ""))
    shot(page, "admin-overview")

    page.click("nav >> text=Accounts")
    before = billing.balance("globex")
    page.select_option("select[name=account]", "globex")
    page.fill("input[name=amount]", "2.50")
    page.fill("input[name=reason]", "invoice 2026-042 paid")
    page.click("#topup button[type=submit]")
    page.wait_for_url("**/admin/accounts?topped_up=1")
    assert billing.balance("globex") == before + 2_500_000
    month = datetime.now(UTC).strftime("%Y-%m")
    credit = billing.statement("globex", month)["entries"][-1]
    assert credit["kind"] == "credit" and credit["amount"] == 2_500_000
    assert credit["reason"] == "invoice 2026-042 paid [by ops]"
    row = page.locator("#accounts tr", has_text="globex").inner_text()
    assert usd_text(before + 2_500_000) in row
    shot(page, "admin-accounts")
    # no reason, no top-up
    page.select_option("select[name=account]", "globex")
    page.fill("input[name=amount]", "1")
    page.fill("input[name=reason]", "   ")
    page.click("#topup button[type=submit]")
    assert billing.balance("globex") == before + 2_500_000
    assert "reason" in page.inner_text(".error")
    refused = [p for p in console.problems if "/admin/topups" in p and "400 (Bad Request)" in p]
    assert len(refused) == 1  # Chromium logs the deliberate 400; not a JavaScript error
    console.problems.remove(refused[0])

    page.click("nav >> text=All keys")
    all_keys = page.inner_text("#all-keys")
    assert "globex" in all_keys and "acme" in all_keys
    assert key not in page.content()
    shot(page, "admin-keys")
    globex_key = next(k for k in billing.api_keys() if key.startswith(k["prefix"]))
    page.once("dialog", lambda dialog: dialog.accept())
    page.click(f"tr[data-key-id='{globex_key['id']}'] button:has-text('Revoke')")
    page.wait_for_url("**/admin/keys")
    assert "revoked" in page.locator(f"tr[data-key-id='{globex_key['id']}']").inner_text()
    assert console.billing.authenticate(key) is None

    page.click("nav >> text=Prices")
    page.fill("#set-price input[name=model]", "avocado-xl")
    page.fill("#set-price input[name=input_per_1m]", "0.75")
    page.fill("#set-price input[name=output_per_1m]", "2.25")
    page.click("#set-price button[type=submit]")
    page.wait_for_url("**/admin/prices")
    price = billing.price("avocado-xl")
    assert price is not None and (price.input_per_1m, price.output_per_1m) == (750_000, 2_250_000)
    assert "avocado-xl" in page.inner_text("#prices")
    shot(page, "admin-prices")

    page.click("nav >> text=Open holds")
    holds = billing.open_holds()
    if holds:
        assert holds[0]["request_id"] in page.inner_text("#holds")
    else:
        assert page.locator("#no-holds").count() == 1
    shot(page, "admin-holds")
    assert not console.problems, console.problems
