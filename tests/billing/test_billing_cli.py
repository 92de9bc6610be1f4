"""``avocado admin …`` end to end: accounts, credits, prices, keys, usage and statements."""

from __future__ import annotations

import argparse
import csv
import io
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from billing_helpers import SECRET

from avocado_llm.billing import Billing
from avocado_llm.billing.command import add_admin_command

MONTH = datetime.now(UTC).strftime("%Y-%m")


def admin(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run ``avocado admin ARGV`` as the CLI would: (exit code, stdout, stderr)."""
    parser = argparse.ArgumentParser(prog="avocado")
    add_admin_command(parser.add_subparsers(dest="command", required=True))
    try:
        args = parser.parse_args(["admin", *argv])
        code = args.func(args)
    except SystemExit as e:  # argparse refused the arguments
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_admin_end_to_end(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, database_url: str
) -> None:
    monkeypatch.setenv("AVOCADO_DATABASE_URL", database_url)
    monkeypatch.delenv("AVOCADO_SECRET", raising=False)
    assert admin(capsys, "accounts", "create", "acme", "--credits", "12.50")[0] == 0
    code, _, err = admin(capsys, "accounts", "create", "acme")
    assert code == 1 and "already exists" in err
    assert admin(capsys, "credits", "add", "acme", "0.5", "--reason", "promo")[0] == 0
    code, _, err = admin(capsys, "credits", "add", "acme", "0.0000001")
    assert code == 2 and "6 decimals" in err
    code, _, err = admin(capsys, "credits", "add", "acme", "-1")
    assert code == 2 and "negative" in err
    code, _, err = admin(capsys, "keys", "create", "--account", "acme")
    assert code == 1 and "AVOCADO_SECRET" in err

    monkeypatch.setenv("AVOCADO_SECRET", SECRET)
    args = ("prices", "set", "avocado-1", "--input-per-1m", "0.5", "--output-per-1m", "1.5")
    assert admin(capsys, *args, "--per-request", "0.000007")[0] == 0
    code, out, _ = admin(
        capsys,
        "keys",
        "create",
        "--account",
        "acme",
        "--models",
        "avocado-1",
        "--rpm",
        "60",
        "--expires-in-days",
        "30",
        "--json",
    )
    created = json.loads(out)
    code, out, err = admin(capsys, "keys", "create", "--account", "acme")
    assert code == 0 and out.count("avk_") == 1 and "only this once" in err

    billing = Billing(database_url, SECRET)
    try:
        info = billing.authenticate(created["key"])
        assert info is not None and info.models == ("avocado-1",) and info.rpm == 60
        charge = billing.settle(billing.hold(info, "avocado-1", 1000, 500, "r-1"), 1000, 400)
        assert charge == 500 + 600 + 7  # $0.5 and $1.5 per 1M tokens, plus 7 micro-USD
        balance = billing.balance("acme")
    finally:
        billing.close()
    assert balance == 13_000_000 - charge

    code, out, _ = admin(capsys, "usage", "--account", "acme", "--json")
    usage = json.loads(out)
    assert usage["balance"] == balance and usage["totals"]["avocado-1"]["charges"] == charge
    assert [e["request_id"] for e in usage["events"]] == ["r-1"]
    code, out, _ = admin(capsys, "usage", "--account", "acme")
    assert "avocado-1" in out and "12.998893" in out

    code, out, _ = admin(capsys, "statement", "--account", "acme", "--month", MONTH)
    s = json.loads(out)
    assert (s["opening"], s["credits"], s["charges"]) == (0, 13_000_000, charge)
    assert s["closing"] == balance
    code, out, _ = admin(
        capsys, "statement", "--account", "acme", "--month", MONTH, "--format", "csv"
    )
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["kind"] for r in rows] == ["opening", "credit", "credit", "charge", "closing"]
    assert sum(int(r["amount_micro"]) for r in rows) == int(rows[-1]["balance_micro"]) == balance
    assert rows[3]["request_id"] == "r-1" and rows[3]["amount_usd"] == "-0.001107"

    assert admin(capsys, "keys", "revoke", created["key_id"])[0] == 0
    billing = Billing(database_url, SECRET)
    try:
        assert billing.authenticate(created["key"]) is None
    finally:
        billing.close()
    code, _, err = admin(capsys, "usage", "--account", "nobody")
    assert code == 1 and "no account named 'nobody'" in err


def test_database_url_flag_and_default(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("AVOCADO_DATABASE_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    assert admin(capsys, "accounts", "create", "here")[0] == 0
    assert (tmp_path / "avocado.db").exists()  # sqlite:///avocado.db by default
    url = f"sqlite:///{tmp_path / 'other.db'}"
    assert admin(capsys, "--database-url", url, "accounts", "create", "a")[0] == 0
    assert admin(capsys, "accounts", "create", "b", "--database-url", url)[0] == 0
    code, _, err = admin(capsys, "credits", "add", "a", "1", "--database-url", url)
    assert code == 0
    code, out, _ = admin(capsys, "usage", "--account", "a", "--json", "--database-url", url)
    assert json.loads(out)["balance"] == 1_000_000
    code, _, err = admin(capsys, "--database-url", "sqlite:////nonexistent/dir/x.db", "migrate")
    assert code == 1 and "cannot use the database" in err
    code, _, err = admin(capsys, "--database-url", "mysql+nodriver://u:pw@h/db", "migrate")
    assert code == 2 and "not one SQLAlchemy can open" in err and "pw" not in err


def test_account_key_limits(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, database_url: str
) -> None:
    """What keys made in the console may have: set on creation, shown, changed, forgotten."""
    monkeypatch.setenv("AVOCADO_DATABASE_URL", database_url)
    monkeypatch.setenv("AVOCADO_SECRET", SECRET)
    code, out, _ = admin(capsys, "accounts", "create", "acme", "--models", "m1,m2", "--rpm", "60",
                         "--max-tokens", "64", "--top-logprobs", "2")  # fmt: skip
    assert code == 0 and "models      m1, m2" in out and "logprobs    top 2" in out
    code, out, _ = admin(capsys, "accounts", "limits", "acme", "--rpm", "none", "--tpm", "500",
                         "--keys-expire-by", "2031-01-31")  # fmt: skip
    assert code == 0 and "rpm         unlimited" in out and "tpm         500" in out
    assert "m1, m2" in out and "max_tokens  64" in out and "2031-01-31" in out  # the rest stay
    billing = Billing(database_url, SECRET)
    try:
        limits, _ = billing.account_key_limits("acme")
        assert limits is not None and limits.plan.logprobs and limits.plan.max_top_logprobs == 2
        assert limits.expires_by == datetime(2031, 1, 31, tzinfo=UTC)
    finally:
        billing.close()
    for bad, says in [(["--rpm", "0"], "rpm must be a positive"),
                      (["--max-tokens", "-5"], "max_tokens must be positive")]:  # fmt: skip
        code, _, err = admin(capsys, "accounts", "limits", "acme", *bad)
        assert code == 1 and says in err, err
    code, _, err = admin(capsys, "accounts", "limits", "acme", "--keys-expire-by", "soon")
    assert code == 2 and "YYYY-MM-DD" in err
    # forgotten: the tightest of the operator's keys, and none yet
    code, out, _ = admin(capsys, "accounts", "limits", "acme", "--reset")
    assert code == 0 and "cannot make keys" in out
    code, _, err = admin(capsys, "keys", "create", "--account", "acme", "--max-tokens", "8")
    assert code == 0 and "no key limits of its own" in err
    code, out, _ = admin(capsys, "accounts", "limits", "acme")
    assert "tightest of the operator's keys" in out and "max_tokens  8" in out
    # created without limits: none of its own
    assert admin(capsys, "accounts", "create", "globex")[0] == 0
    assert "cannot make keys" in admin(capsys, "accounts", "limits", "globex")[1]
