"""The harvest against a hostile or broken OpenAI-compatible endpoint (``hostile_endpoint``), over
real HTTP on loopback: what it sends never poisons the records, never stops the run, never holds
a request past its deadline or its byte cap, and never gets the API key written anywhere.

Then the stages downstream of a harvest written by an older version, which let NaN and positive
log-probabilities through: ``fuse`` does not crash and ``distill`` stops with a clear error."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from hostile_endpoint import JSON_MODES, HostileServer, Hostility, serve_hostile

from avocado_llm.cli import main
from avocado_llm.config import Recipe, load_recipe
from avocado_llm.harvest import harvest, harvest_prompts, read_records, record_key
from avocado_llm.harvest.keys import record_row
from avocado_llm.harvest.runner import HarvestSummary
from avocado_llm.harvest.store import HarvestStore
from avocado_llm.teachers import (
    Completion,
    TeacherError,
    TeacherInfo,
    TokenLogprobs,
    sampling_params,
)

KEY_ENV = "AVOCADO_HOSTILE_TEST_KEY"
KEY = "sk-hostile-0123456789abcdef"
MAX_NEW_TOKENS = 8
TOP_K = 3
GOOD = ("good", "tiny_positive_logprob")
BAD_ANSWERS = [m for m in JSON_MODES if m not in GOOD] + ["echo_html", "markup_error", "deep_json"]
"""Modes whose answer is unusable whatever the retries: exactly that answer fails."""


@pytest.fixture(scope="module")
def server() -> Iterator[HostileServer]:
    with serve_hostile() as app:
        yield app


@pytest.fixture
def endpoint(server: HostileServer) -> HostileServer:
    server.hostility = Hostility()
    server.requests = server.attacked = 0
    server.headers.clear()
    server.queries.clear()
    return server


@pytest.fixture
def key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(KEY_ENV, KEY)
    return KEY


def make_recipe(
    tmp_path: Path, zoo_dir: Path, base_url: str, teacher: dict[str, Any] | None = None, **harvest
) -> Recipe:
    """Two families × 3 prompts (6), batches of 4, one openai teacher at ``base_url``."""
    data = {
        "name": "hostile",
        "output_dir": str(tmp_path / "runs"),
        "world": {"families": ["arithmetic", "reverse"], "zoo_dir": str(zoo_dir)},
        "teachers": [
            {"name": "remote", "kind": "openai", "base_url": base_url, "model": "hostile",
             "licence": "test", "api_key_env": KEY_ENV, **(teacher or {})},
        ],
        "harvest": {
            "prompts_per_family": 3, "max_new_tokens": MAX_NEW_TOKENS, "top_logprobs": TOP_K,
            "batch_size": 4, "max_retries": 1, "request_timeout_s": 5, **harvest,
        },
    }  # fmt: skip
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return load_recipe(path)


def prompts_of(recipe: Recipe, *positions: int) -> set[str]:
    prompts = harvest_prompts(recipe)
    return {prompts[p].messages[-1]["content"] for p in positions}


def run(recipe: Recipe) -> HarvestSummary:
    return asyncio.run(harvest(recipe, progress=False))


def failures(recipe: Recipe) -> list[dict[str, Any]]:
    path = recipe.harvest_dir / "failures.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def assert_sane_records(recipe: Recipe) -> list[dict[str, Any]]:
    """Every stored record is what the contract says: finite log-probabilities ≤ 0, token
    strings, counts within what max_tokens allows, text a token can spell."""
    rows = read_records(recipe.harvest_dir).to_pylist()
    for row in rows:
        values = [*row["token_logprobs"], *(v for top in row["top_logprobs"] for v in top)]
        assert values and all(math.isfinite(v) and v <= 0.0 for v in values), row["key"]
        assert all(isinstance(t, str) for t in row["tokens"])
        assert all(isinstance(t, str) for top in row["top_tokens"] for t in top)
        assert 0 <= row["completion_tokens"] <= MAX_NEW_TOKENS + 1
        assert 0 <= row["prompt_tokens"] < 2**31
        assert row["completion"] == "42"
    return rows


def assert_nowhere(root: Path, secrets: list[str], *texts: str) -> None:
    """No secret in any file under ``root`` (bytes, and JSON-escaped) or in ``texts``."""
    files = [p for p in root.rglob("*") if p.is_file()]
    assert files
    for secret in secrets:
        needles = {secret.encode(), json.dumps(secret)[1:-1].encode()}
        for path in files:
            data = path.read_bytes()
            assert not any(n in data for n in needles), f"{secret!r} is in {path}"
        for text in texts:
            assert secret not in text and secret not in "".join(text.split())  # rich wraps


@pytest.mark.parametrize("mode", BAD_ANSWERS)
def test_a_bad_answer_is_one_recorded_failure_and_the_rest_is_harvested(
    mode: str, endpoint: HostileServer, key: str, tmp_path: Path, zoo_dir: Path
) -> None:
    recipe = make_recipe(tmp_path, zoo_dir, endpoint.base_url)
    bad = prompts_of(recipe, 1, 4)  # one in each batch of 4
    endpoint.hostility = Hostility(mode, bad_prompts=bad)
    summary = run(recipe)
    assert endpoint.attacked == 2  # a bad answer is not asked again within the run
    assert (summary.written, summary.failed) == (4, 2)
    logged = failures(recipe)
    assert len(logged) == 2
    assert {f["prompt_id"] for f in logged} == {
        ex.id for ex in harvest_prompts(recipe) if ex.messages[-1]["content"] in bad
    }
    assert all(f["reason"].startswith("BadAnswer: teacher 'remote'") for f in logged)
    assert len(assert_sane_records(recipe)) == 4

    # The next run asks only those two again; answered well now, they complete the harvest.
    endpoint.hostility = Hostility()
    again = run(recipe)
    assert (again.written, again.failed, endpoint.requests) == (2, 0, 8)
    assert len(assert_sane_records(recipe)) == 6


def test_tiny_positive_log_probabilities_are_rounding_stored_as_zero(
    endpoint: HostileServer, key: str, tmp_path: Path, zoo_dir: Path
) -> None:
    recipe = make_recipe(tmp_path, zoo_dir, endpoint.base_url)
    endpoint.hostility = Hostility("tiny_positive_logprob")
    summary = run(recipe)
    assert (summary.written, summary.failed) == (6, 0)
    rows = assert_sane_records(recipe)
    assert all(row["token_logprobs"][0] == 0.0 == row["top_logprobs"][0][0] for row in rows)


@pytest.mark.parametrize("mode", ["endless", "huge_body"])
def test_a_body_past_the_byte_cap_is_cut_retried_then_one_failure(
    mode: str, endpoint: HostileServer, key: str, tmp_path: Path, zoo_dir: Path
) -> None:
    recipe = make_recipe(tmp_path, zoo_dir, endpoint.base_url)
    endpoint.hostility = Hostility(mode, bad_prompts=prompts_of(recipe, 2))
    t0 = time.monotonic()
    summary = run(recipe)
    assert time.monotonic() - t0 < 30  # an endless body would never end
    assert endpoint.attacked == 2  # max_retries: 1
    assert (summary.written, summary.failed) == (5, 1)
    [failure] = failures(recipe)
    assert "gave up after 2 attempts" in failure["reason"] and "cap" in failure["reason"]
    assert len(assert_sane_records(recipe)) == 5


def test_a_dripping_body_ends_at_the_request_deadline_not_the_read_timeout(
    endpoint: HostileServer, key: str, tmp_path: Path, zoo_dir: Path
) -> None:
    # ~900 bytes at one per 0.3 s: 4.5 minutes if only each read were timed.
    recipe = make_recipe(tmp_path, zoo_dir, endpoint.base_url, request_timeout_s=1)
    endpoint.hostility = Hostility("drip", bad_prompts=prompts_of(recipe, 0), drip_every_s=0.3)
    t0 = time.monotonic()
    summary = run(recipe)
    elapsed = time.monotonic() - t0
    assert endpoint.attacked == 2
    assert elapsed < 10  # two attempts of 1 s and a backoff, with a generous margin
    assert (summary.written, summary.failed) == (5, 1)
    [failure] = failures(recipe)
    assert "no whole answer within request_timeout_s (1 s)" in failure["reason"]


def test_a_too_long_answer_is_refused_under_the_cap(
    endpoint: HostileServer, key: str, tmp_path: Path, zoo_dir: Path
) -> None:
    """200 KB of text is under the byte cap but no 8 tokens spell it."""
    recipe = make_recipe(tmp_path, zoo_dir, endpoint.base_url)
    endpoint.hostility = Hostility("long_text", bad_prompts=prompts_of(recipe, 3))
    summary = run(recipe)
    assert (summary.written, summary.failed) == (5, 1)
    assert "more than max_tokens=8 tokens can spell" in failures(recipe)[0]["reason"]


@pytest.mark.parametrize("mode", ["echo_html", "echo_error"])
def test_the_key_never_reaches_a_file_or_the_terminal(
    mode: str,
    endpoint: HostileServer,
    tmp_path: Path,
    zoo_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """A key pasted with its line end; a server whose page (200, then a 502) echoes the request's
    headers, the key with them."""
    monkeypatch.setenv(KEY_ENV, KEY + "\r\n")
    recipe = make_recipe(tmp_path, zoo_dir, endpoint.base_url)
    endpoint.hostility = Hostility(mode, bad_prompts=prompts_of(recipe, 1, 4))
    code = main(["harvest", str(tmp_path / "recipe.yaml")])
    out, err = capfd.readouterr()
    assert code == 1 and endpoint.attacked >= 2
    assert {h["authorization"] for h in endpoint.headers} == {f"Bearer {KEY}"}  # stripped
    logged = failures(recipe)
    assert logged and all("Bearer ***" in f["reason"] for f in logged)
    assert "Bearer***" in "".join(err.split())  # rich wraps long lines
    assert_nowhere(recipe.run_dir, [KEY, KEY[3:]], out, err)


def test_credentials_in_base_url_stay_out_of_provenance_and_failures(
    endpoint: HostileServer, tmp_path: Path, zoo_dir: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    password, query_key = "pa55-WORD-xyz", "QUERY-SECRET-42"
    url = endpoint.base_url.replace("http://", f"http://alice:{password}@") + f"?key={query_key}"
    recipe = make_recipe(tmp_path, zoo_dir, url, teacher={"api_key_env": None})
    endpoint.hostility = Hostility("echo_html", bad_prompts=prompts_of(recipe, 1))
    summary = run(recipe)
    out, err = capfd.readouterr()
    assert (summary.written, summary.failed) == (5, 1)
    assert set(endpoint.queries) == {f"key={query_key}"}  # the credentials still do their job
    basic = endpoint.headers[0]["authorization"]
    assert basic.startswith("Basic ")
    revision = f"{endpoint.base_url}#hostile"
    assert {r["teacher_revision"] for r in read_records(recipe.harvest_dir).to_pylist()} == {
        revision
    }
    manifest = json.loads((recipe.harvest_dir / "manifest.json").read_text())
    assert manifest["teachers"]["remote"]["revision"] == revision
    assert_nowhere(recipe.run_dir, [password, query_key, basic.split()[1]], out, err)


@pytest.mark.parametrize("value", ["sk-abc\x1bdef-123", "sk-abc\ndef-123", "sk-abcdéf-123"])
def test_a_key_with_control_characters_is_refused_without_being_shown(
    value: str,
    endpoint: HostileServer,
    tmp_path: Path,
    zoo_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(KEY_ENV, value)
    recipe = make_recipe(tmp_path, zoo_dir, endpoint.base_url)
    with pytest.raises(TeacherError, match=f"API key in {KEY_ENV} holds 1 control") as error:
        run(recipe)
    assert "abc" not in str(error.value) and "def" not in str(error.value)
    assert main(["harvest", str(tmp_path / "recipe.yaml")]) == 1
    _, err = capfd.readouterr()
    assert f"the API key in {KEY_ENV} holds" in err and "abc" not in err
    assert endpoint.requests == 0


@pytest.mark.parametrize("poison", [math.nan, 1000.0, math.inf])
def test_an_old_harvest_with_bad_log_probabilities_fuses_and_distill_refuses_it(
    poison: float, tmp_path: Path, zoo_dir: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Records of a harvest written before the endpoint refused such values: ``fuse --strategy
    vote`` (label-free reliability from confidence) works, ``distill`` stops at once with a
    clear error, non-zero, and saves no student."""
    recipe = make_recipe(tmp_path, zoo_dir, "http://127.0.0.1:9/v1", teacher={"api_key_env": None})
    data = yaml.safe_load((tmp_path / "recipe.yaml").read_text())
    data["teachers"] = [{**data["teachers"][0], "name": name} for name in ("old-a", "old-b")]
    data["student"] = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "num_kv_heads": 1,
                       "intermediate_size": 64, "vocab_size": 400}  # fmt: skip
    data["training"] = {"steps": 2, "batch_size": 2, "device": "cpu", "checkpoint_every": 1}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    recipe = load_recipe(path)
    params = sampling_params(recipe.harvest, recipe.seed)
    store = HarvestStore(recipe.harvest_dir, recipe.name, recipe.harvest.shard_size)
    try:
        for name, value in (("old-a", poison), ("old-b", -0.25)):
            info = TeacherInfo(name, "hostile", "http://127.0.0.1:9/v1#hostile", "test")
            store.register_teacher(info, params)
            logprobs = [
                TokenLogprobs(None, t, value, [None, None], [t, "7"], [value, -3.0]) for t in "42"
            ]
            answer = Completion("42", "stop", logprobs=logprobs, completion_tokens=2)
            now = datetime.now(UTC)
            rows = [
                record_row(
                    record_key(info, ex.messages, params, 0), ex, info, params, 0, answer, now
                )
                for ex in harvest_prompts(recipe)
            ]
            assert store.write(name, rows) == 6
    finally:
        store.close()

    assert main(["fuse", str(path), "--strategy", "vote"]) == 0
    code = main(["distill", str(path), "--strategy", "vote"])
    out, err = capfd.readouterr()
    assert code == 1
    assert "student saved" not in out
    assert "NaN or infinite" in err and "harvest" in err and "nothing was trained" in err
    student = recipe.run_dir / "student"
    assert not (student / "model.safetensors").exists()
    assert not list(student.glob("checkpoints/step-*"))


def test_the_students_provenance_records_the_endpoint_without_its_credentials(
    tmp_path: Path, zoo_dir: Path
) -> None:
    """``avocado.json`` and the model card record the recipe: its ``base_url`` loses the user,
    password and query that may carry an endpoint's credentials."""
    from avocado_llm.distill.pipeline import public_recipe

    password, query_key = "pa55-WORD-xyz", "QUERY-SECRET-42"
    url = f"http://alice:{password}@127.0.0.1:9/v1?key={query_key}"
    recipe = make_recipe(tmp_path, zoo_dir, url, teacher={"api_key_env": None})
    text = json.dumps(public_recipe(recipe))
    assert password not in text and query_key not in text and "alice" not in text
    assert "http://127.0.0.1:9/v1" in text
