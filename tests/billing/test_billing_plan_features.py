"""A plan's tools and structured-outputs switches: set by ``avocado admin keys create`` and
``accounts create/limits`` (on unless switched off), kept by the meet of an account's keys, and
read as on from plans stored before the switches existed."""

from __future__ import annotations

import argparse

import pytest
from billing_helpers import SECRET

from avocado_llm.billing import Billing, Plan
from avocado_llm.billing.command import add_admin_command
from avocado_llm.billing.key_limits import KeyLimits, meet


def admin(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="avocado")
    add_admin_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["admin", *argv])
    code = args.func(args)
    return int(code or 0), capsys.readouterr().out


def test_admin_sets_and_shows_the_switches(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, database_url: str
) -> None:
    monkeypatch.setenv("AVOCADO_DATABASE_URL", database_url)
    monkeypatch.setenv("AVOCADO_SECRET", SECRET)
    code, out = admin(capsys, "accounts", "create", "acme", "--max-tokens", "64")
    assert code == 0 and "tools       yes" in out and "structured_outputs yes" in out
    code, out = admin(capsys, "accounts", "limits", "acme", "--no-structured-outputs")
    assert code == 0 and "tools       yes" in out and "structured_outputs no" in out
    assert "max_tokens  64" in out  # the other limits stay
    code, _ = admin(capsys, "keys", "create", "--account", "acme", "--no-tools")
    assert code == 0
    code, _ = admin(capsys, "keys", "create", "--account", "acme")
    assert code == 0
    billing = Billing(database_url, SECRET)
    try:
        limits, _ = billing.account_key_limits("acme")
        assert limits is not None and limits.plan.tools and not limits.plan.structured_outputs
        plans = sorted((k["plan"]["tools"], k["plan"]["structured_outputs"])
                       for k in billing.api_keys())  # fmt: skip
        assert plans == [(False, True), (True, True)]
    finally:
        billing.close()


def test_the_meet_allows_a_feature_only_if_both_do_and_old_plans_read_as_on() -> None:
    on, off = KeyLimits(plan=Plan()), KeyLimits(plan=Plan(tools=False, structured_outputs=False))
    assert not meet(on, off).plan.tools and not meet(off, on).plan.structured_outputs
    assert meet(on, on).plan.tools and meet(on, on).plan.structured_outputs
    old = Plan.from_json({"name": "2025", "max_tokens": 64, "logprobs": False})
    assert old.tools and old.structured_outputs and old.max_tokens == 64
    assert KeyLimits.from_json({"plan": {"tools": False}}).plan.tools is False
