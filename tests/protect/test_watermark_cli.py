"""The watermark end to end through the real API on loopback: answers of each account carry
its key, `avocado watermark detect` finds the account (JSONL with prompts, plain text), a plan
with `watermark: 0` gives unmarked answers, and `avocado watermark suspect` flags a model
that answers with our watermark."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest
from watermark_helpers import SECRET

from avocado_llm.billing import MICRO, Billing, Plan
from avocado_llm.cli import main
from avocado_llm.serve import ServeSettings, create_app
from avocado_llm.serve.background import serve_in_thread
from avocado_llm.world.tasks import FAMILIES, generate

NAME = "uncertain"
PROMPTS = [e.messages for e in generate(list(FAMILIES), "heldout", 8, seed=5)]


@contextmanager
def run_server(app: object) -> Iterator[str]:
    with serve_in_thread(app) as origin:
        yield f"{origin}/v1"


@dataclass
class Api:
    url: str
    database_url: str
    model_dir: Path
    accounts: dict[str, int]
    keys: dict[str, str]

    def answers(self, key: str, temperature: float) -> list[str]:
        client = openai.OpenAI(base_url=self.url, api_key=key, max_retries=0)
        out = []
        for i, messages in enumerate(PROMPTS):
            r = client.chat.completions.create(
                model=NAME, messages=messages, max_tokens=24, temperature=temperature, seed=i
            )  # type: ignore[arg-type]
            out.append(r.choices[0].message.content or "")
        client.close()
        return out


@pytest.fixture(scope="module")
def api(uncertain_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    tmp = tmp_path_factory.mktemp("watermark-api")
    database_url = f"sqlite:///{tmp / 'ledger.db'}"
    billing = Billing(database_url, SECRET)
    billing.migrate()
    billing.set_price(NAME, 0, 0, 0)
    accounts, keys = {}, {}
    for name in ("acme", "rival", "globex"):
        accounts[name] = billing.create_account(name, 10 * MICRO)
        keys[name] = billing.create_key(name)[1]  # the default plan: watermark on
    keys["acme-off"] = billing.create_key("acme", plan=Plan(watermark=0))[1]
    settings = ServeSettings(
        model_dir=uncertain_model,
        model_name=NAME,
        secret=SECRET,
        database_url=database_url,
        threads=1,
    )
    with run_server(create_app(settings, billing=billing)) as url:
        yield Api(url, database_url, uncertain_model, accounts, keys)
    billing.close()


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict]:
    capsys.readouterr()
    rc = main(args)
    out = capsys.readouterr().out
    return rc, (json.loads(out) if rc == 0 and "--json" in args else {"text": out})


def suspect_args(api: Api) -> list[str]:
    """``avocado watermark suspect`` asking the API with ``$SUSPECT_KEY``, our ledger's
    accounts as candidates."""
    return [
        "watermark", "suspect", "--url", api.url, "--api-key-env", "SUSPECT_KEY",
        "--model-dir", str(api.model_dir), "--database-url", api.database_url,
    ]  # fmt: skip


def write_jsonl(path: Path, texts: list[str], with_prompts: bool = True) -> Path:
    rows = [
        {"messages": m, "text": t} if with_prompts else {"text": t}
        for m, t in zip(PROMPTS, texts, strict=True)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("temperature", [0.0, 1.0], ids=["greedy", "sampled"])
def test_detect_finds_the_account_that_received_the_answers(
    api: Api,
    tmp_path: Path,
    temperature: float,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AVOCADO_SECRET", SECRET)
    texts = api.answers(api.keys["rival"], temperature)
    path = write_jsonl(tmp_path / "answers.jsonl", texts)
    rc, r = run_cli(
        [
            "watermark",
            "detect",
            str(path),
            "--model",
            str(api.model_dir),
            "--by-account",
            "--database-url",
            api.database_url,
            "--json",
        ],
        capsys,
    )
    assert rc == 0
    assert r["account"] == api.accounts["rival"]
    assert r["accounts_tested"] == 3
    assert r["scored_tokens"] >= 100
    assert r["p_value"] < 1e-6
    assert r["p_value_corrected"] < 1e-6
    others = [s for s in r["by_account"] if s["account"] != api.accounts["rival"]]
    assert all(s["p_value"] > 1e-3 for s in others)


def test_detect_plain_text_and_human_report(
    api: Api, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AVOCADO_SECRET", SECRET)
    texts = api.answers(api.keys["globex"], 0.0)
    path = tmp_path / "answers.txt"
    path.write_text("\n".join(t.replace("\n", " ") for t in texts) + "\n")
    ids = ",".join(str(i) for i in api.accounts.values())
    rc, r = run_cli(
        [
            "watermark",
            "detect",
            str(path),
            "--model",
            str(api.model_dir),
            "--by-account",
            "--accounts",
            ids,
        ],
        capsys,
    )
    assert rc == 0
    text = r["text"]
    assert f"best account: {api.accounts['globex']} of 3" in text
    assert "p-value (exact binomial)" in text and "scored tokens" in text
    assert "WATERMARKED" in text


def test_a_plan_without_watermark_gives_unmarked_answers(
    api: Api, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AVOCADO_SECRET", SECRET)
    path = write_jsonl(tmp_path / "off.jsonl", api.answers(api.keys["acme-off"], 0.0))
    rc, r = run_cli(
        [
            "watermark",
            "detect",
            str(path),
            "--model",
            str(api.model_dir),
            "--account",
            str(api.accounts["acme"]),
            "--json",
        ],
        capsys,
    )
    assert rc == 0
    assert r["scored_tokens"] >= 100
    assert r["p_value"] > 1e-3


def test_suspect_flags_a_model_answering_with_our_watermark(
    api: Api, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AVOCADO_SECRET", SECRET)
    monkeypatch.setenv("SUSPECT_KEY", api.keys["globex"])
    saved = tmp_path / "suspect.jsonl"
    rc, r = run_cli(
        [
            *suspect_args(api),
            "--prompts",
            "4",
            "--random-keys",
            "2000",
            "--save",
            str(saved),
            "--json",
        ],
        capsys,
    )
    assert rc == 0
    assert r["model"] == NAME and r["answers"] == 4 * len(FAMILIES)
    assert r["account"] == api.accounts["globex"]
    assert r["p_value_corrected"] < 1e-3
    assert len(saved.read_text().splitlines()) == r["answers"]
    # the reference test: it repeats the answers globex's watermark changed (not all of them
    # as re-tokenised: this random model's odd token sequences do not survive a text round
    # trip; test_reference.py checks the replay on a trained model), far more than a random key's
    ref = r["reference"]
    assert ref["account"] == api.accounts["globex"] and ref["flipped"] >= 10
    assert ref["followed"] >= ref["flipped"] // 2 and ref["null_rate"] < 0.2
    assert ref["p_value"] == pytest.approx(1 / (ref["random_keys"] + 1))
    # the saved answers, tested again without asking (`--answers`): the same verdicts
    rc, again = run_cli(
        ["watermark", "suspect", "--answers", str(saved), "--model-dir", str(api.model_dir),
         "--database-url", api.database_url, "--random-keys", "2000", "--json"],
        capsys,
    )  # fmt: skip
    assert rc == 0 and again["answers_file"] == str(saved) and again["answers"] == r["answers"]
    assert (again["account"], again["p_value"]) == (r["account"], r["p_value"])
    same = ("account", "flipped", "followed")
    assert {k: again["reference"][k] for k in same} == {k: ref[k] for k in same}
    globex = str(api.accounts["globex"])
    rc, text = run_cli(["watermark", "suspect", "--answers", str(saved), "--model-dir",
                        str(api.model_dir), "--account", globex], capsys)  # fmt: skip
    assert rc == 0 and str(saved) in text["text"]
    # a suspect that answers without our watermark is not flagged
    monkeypatch.setenv("SUSPECT_KEY", api.keys["acme-off"])
    rc, r = run_cli(
        [
            *suspect_args(api),
            "--prompts",
            "4",
            "--random-keys",
            "2000",
            "--json",
        ],
        capsys,
    )
    assert rc == 0
    assert r["p_value_corrected"] > 0.05
    assert r["reference"]["followed"] == 0 and r["reference"]["p_value_corrected"] == 1.0


def test_suspect_refuses_saved_answers_without_their_prompts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AVOCADO_SECRET", SECRET)
    bare = tmp_path / "bare.jsonl"
    bare.write_text('{"text": "42"}\n')
    base = ["watermark", "suspect", "--model-dir", "zoo/qwen-tiny", "--account", "1"]
    assert main([*base, "--answers", str(bare)]) == 2
    assert "needs its prompt" in capsys.readouterr().err
    assert main([*base, "--answers", str(tmp_path / "missing.jsonl")]) == 2
    assert "no file" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # --url or --answers, not both
        main([*base, "--answers", str(bare), "--url", "http://127.0.0.1:9/v1"])


def test_detect_refuses_without_secret_or_account(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "a.txt"
    path.write_text("The answer is 42.\n")
    monkeypatch.delenv("AVOCADO_SECRET", raising=False)
    assert (
        main(["watermark", "detect", str(path), "--model", "zoo/qwen-tiny", "--account", "1"]) == 2
    )
    assert "AVOCADO_SECRET" in capsys.readouterr().err
    monkeypatch.setenv("AVOCADO_SECRET", SECRET)
    assert main(["watermark", "detect", str(path), "--model", "zoo/qwen-tiny"]) == 2
    assert "--by-account" in capsys.readouterr().err


def test_suspect_asks_the_prompts_of_a_file(
    api: Api, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Your own prompts (`--prompts-file`, any column): exactly those are asked, and a model
    answering with globex's watermark is flagged on them."""
    monkeypatch.setenv("AVOCADO_SECRET", SECRET)
    monkeypatch.setenv("SUSPECT_KEY", api.keys["globex"])
    questions = [e.messages[-1]["content"] for e in generate(list(FAMILIES), "train", 4, seed=11)]
    csv = tmp_path / "mine.csv"
    csv.write_text("question\n" + "".join(json.dumps(q) + "\n" for q in questions))
    saved = tmp_path / "suspect.jsonl"
    rc, r = run_cli(
        [
            *suspect_args(api),
            "--prompts-file",
            str(csv),
            "--prompt-column",
            "question",
            "--ask-all",
            "--random-keys",
            "2000",
            "--save",
            str(saved),
            "--json",
        ],
        capsys,
    )
    assert rc == 0
    assert r["candidate_prompts"] == r["answers"] == len(questions)
    asked = [json.loads(line)["messages"][-1]["content"] for line in saved.read_text().splitlines()]
    assert asked == questions
    assert r["account"] == api.accounts["globex"] and r["p_value_corrected"] < 1e-3
