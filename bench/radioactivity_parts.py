"""The pieces of ``bench/radioactivity.py``: the server on loopback, the ledger, accuracy through
the API, the detection pool, the students B and C, and the suspect check (run as CLI commands)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SECRET = "radioactivity-bench-secret (server secret of the Avocado API)"
SUSPECT_SECRET = "the suspect's own server secret"
MODEL_NAME = "avocado-tiny"
POOL_SEED = 4242  # train-split prompts of the extra detection pool
ACCOUNTS = ("acme", "rival", "globex", "initech")  # rival distills the API into student B


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


@contextmanager
def serving(
    model_dir: Path, database_url: str, secret: str, upstream: tuple[str, str] | None = None
) -> Iterator[str]:
    """The real Avocado server (``create_app``) on 127.0.0.1, in a thread; yields its /v1 URL.
    ``upstream`` (URL, model name there): the gateway in front of vLLM, which watermarks with
    Avocado's processor (``model_dir`` is the same model, for the gateway's tokenizer)."""
    from avocado_llm.serve import ServeSettings, create_app
    from avocado_llm.serve.background import serve_in_thread

    settings = ServeSettings(
        model_dir=model_dir,
        model_name=MODEL_NAME,
        secret=secret,
        database_url=database_url,
        threads=1,
        max_batch_size=64,
    )
    if upstream is not None:
        settings = settings.model_copy(
            update={"upstream_url": upstream[0], "upstream_model": upstream[1]}
        )
    with serve_in_thread(create_app(settings)) as origin:
        yield f"{origin}/v1"


def check_upstream(url: str, model: str | None) -> str:
    """The model vLLM serves at ``url`` (``…/v1``; its first one unless ``model`` names one),
    once it is checked that vLLM runs Avocado's watermark processor (the gateway's probe).
    Raises ``SystemExit`` with the reason otherwise."""
    import aiohttp

    from avocado_llm.serve.upstream_probe import MISSING, Verdict, probe

    async def ask() -> tuple[list[str], str, Verdict]:
        async with aiohttp.ClientSession(trust_env=False) as session:
            timeout = aiohttp.ClientTimeout(total=30)
            async with session.get(url.rstrip("/") + "/models", timeout=timeout) as r:
                r.raise_for_status()
                names = [str(m["id"]) for m in (await r.json())["data"]]
            name = model or (names[0] if names else "")
            return names, name, await probe(session, url, name)

    try:
        names, name, verdict = asyncio.run(ask())
    except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError) as e:
        why = f"{type(e).__name__}: {e}"
        raise SystemExit(f"error: {url}/models did not list its models ({why})") from e
    if name not in names:
        raise SystemExit(f"error: the upstream serves {names}, not {name!r} (--upstream-model)")
    if verdict is Verdict.MISSING:
        raise SystemExit(f"error: {MISSING.partition(' or pass')[0]}")
    if verdict is not Verdict.MARKS:
        raise SystemExit(f"error: {url} did not answer the watermark probe (see the log)")
    return name


def ledger(path: Path, secret: str, accounts: tuple[str, ...]) -> tuple[str, dict[str, Any]]:
    """A fresh SQLite ledger with a price, the accounts, and per account a key with the default
    plan (watermark on) and one with ``watermark: 0``."""
    from avocado_llm.billing import MICRO, Billing, Plan

    path.unlink(missing_ok=True)
    url = f"sqlite:///{path}"
    billing = Billing(url, secret)
    billing.migrate()
    billing.set_price(MODEL_NAME, 0, 0, 0)
    keys: dict[str, Any] = {}
    for name in accounts:
        account_id = billing.create_account(name, 1000 * MICRO)
        _, on = billing.create_key(name, plan=Plan(name="default", max_tokens=64))
        _, off = billing.create_key(
            name, plan=Plan(name="no-watermark", max_tokens=64, watermark=0)
        )
        keys[name] = {"id": account_id, "on": on, "off": off}
    billing.close()
    return url, keys


def endpoint_accuracy(url: str, key: str, examples: list, out: Path | None) -> dict[str, Any]:
    """Greedy held-out accuracy through the API (the evaluation's endpoint runner); the
    answers (with their prompts) go to ``out`` as JSONL."""
    from avocado_llm.evaluate.runner import evaluate_endpoint
    from avocado_llm.teachers.openai_compat import OpenAICompatTeacher

    os.environ["BENCH_EVAL_KEY"] = key
    teacher = OpenAICompatTeacher(
        "api",
        url,
        MODEL_NAME,
        api_key_env="BENCH_EVAL_KEY",
        supports_logprobs=False,
        max_concurrency=16,
    )
    result = asyncio.run(evaluate_endpoint(teacher, examples, max_new_tokens=24))
    answers = [a for _, a, _ in result.answers]
    if out is not None:
        rows = [{"messages": e.messages, "text": a} for e, a in zip(examples, answers, strict=True)]
        out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    families = {f: round(s.accuracy, 4) for f, s in result.families.items()}
    correct = sum(ok for _, _, ok in result.answers)
    return {
        "overall": result.overall,
        "micro": correct / len(examples),
        "families": families,
        "answers": answers,
    }


def cli(*args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``avocado ARGS --json`` in a fresh process; its JSON answer."""
    cmd = [sys.executable, "-m", "avocado_llm.cli", *args, "--json"]
    done = subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, cwd=ROOT
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:2])} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)


def pooled_detection(
    answers_file: Path, served: Path, out: Path, database_url: str, target: int, seed: int = 0
) -> dict[str, Any]:
    """Answers in random order until ``target`` scored tokens, then ``watermark detect``."""
    from avocado_llm.protect.detect import Detector, read_answers
    from avocado_llm.protect.scheme import DEFAULT_PARAMS

    answers = read_answers(answers_file)
    random.Random(seed).shuffle(answers)
    detector = Detector.from_model_dir(served, DEFAULT_PARAMS, DEFAULT_PARAMS.min_entropy)
    ids = [detector.token_ids(a.text) for a in answers]
    keep = None
    if detector.gate is not None:
        keep = detector.gate.keep([a.messages or [] for a in answers], ids)
    from avocado_llm.protect.scheme import distinct_pairs

    n = len(answers)
    for n in range(1, len(answers) + 1):
        pairs = distinct_pairs(ids[:n], DEFAULT_PARAMS, keep[:n] if keep else None)
        if len(pairs) >= target:
            break
    rows = [{"messages": a.messages, "text": a.text} for a in answers[:n]]
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = {"AVOCADO_SECRET": SECRET}
    return cli(
        "watermark",
        "detect",
        str(out),
        "--model",
        str(served),
        "--by-account",
        "--database-url",
        database_url,
        env=env,
    )


def robustness(answers_file: Path, served: Path, account_id: int) -> dict[str, Any]:
    """What edits do to detection, on the same watermarked answers: the text alone (no
    prompts, so every position is scored), and a share of each answer's tokens replaced by
    random ones (a crude stand-in for paraphrasing)."""
    from avocado_llm.protect.detect import Detector, read_answers
    from avocado_llm.protect.scheme import DEFAULT_PARAMS, account_key, distinct_pairs, score_pairs

    answers = read_answers(answers_file)
    detector = Detector.from_model_dir(served, DEFAULT_PARAMS, DEFAULT_PARAMS.min_entropy)
    assert detector.gate is not None
    key = account_key(SECRET, account_id)
    ids = [detector.token_ids(a.text) for a in answers]
    prompts = [a.messages or [] for a in answers]
    out: dict[str, Any] = {}
    [s] = score_pairs(distinct_pairs(ids, DEFAULT_PARAMS), [key], DEFAULT_PARAMS)
    out["text_only_all_answers"] = {"scored_tokens": s.scored, "p_value": s.p_value}
    vocab = len(detector.tokenizer)
    for share in (0.1, 0.25, 0.5):
        rng = random.Random(1)
        edited = [[rng.randrange(vocab) if rng.random() < share else t for t in row] for row in ids]
        keep = detector.gate.keep(prompts, edited)
        [s] = score_pairs(distinct_pairs(edited, DEFAULT_PARAMS, keep), [key], DEFAULT_PARAMS)
        out[f"tokens_replaced_{int(share * 100)}pct"] = {
            "scored_tokens": s.scored,
            "green_fraction": round(s.green_fraction, 4),
            "p_value": s.p_value,
        }
    return out


def hesitant(served: Path, examples: list) -> list:
    """The examples whose unwatermarked answer (by the served model) has gated positions — the
    prompts whose API answers carry the mark (``avocado watermark suspect`` chooses the same
    way); the choice depends on the model, not on a key."""
    from avocado_llm.protect.detect import EntropyGate
    from avocado_llm.protect.scheme import DEFAULT_PARAMS

    gate = EntropyGate.from_model_dir(served, DEFAULT_PARAMS.min_entropy)
    counts = gate.hesitations([e.messages for e in examples])
    return [e for e, c in zip(examples, counts, strict=True) if c > 0]


def recipe_for(
    name: str,
    out_dir: Path,
    teachers: list[dict[str, Any]],
    args: argparse.Namespace,
    top_logprobs: int = 0,
    seed: int = 1,
) -> Any:
    """A tiny-world recipe: SFT-only distillation (endpoints give no log-probabilities);
    ``seed`` is the recipe's (its prompts' draw, the student's initialisation and data order)."""
    from avocado_llm.config import recipe_from_dict

    families = ["arithmetic", "reverse", "facts", "counting", "sorting", "units"]
    data = {
        "name": name,
        "seed": seed,
        "output_dir": str(out_dir),
        "world": {
            "families": families,
            "train_per_family": args.prompts_per_family,
            "heldout_per_family": 50,
            "zoo_dir": str(ROOT / "zoo"),
        },
        "teachers": teachers,
        "harvest": {
            "prompts_per_family": args.prompts_per_family,
            "samples_per_prompt": 1,
            "temperature": 0.0,
            "max_new_tokens": 24,
            "top_logprobs": top_logprobs,
            "batch_size": 64,
        },
        "fusion": {"strategy": args.fusion},
        "student": {
            "architecture": "qwen3",
            "hidden_size": args.student_hidden,
            "num_layers": args.student_layers,
            "num_heads": 4,
            "num_kv_heads": 2,
            "intermediate_size": args.student_hidden * 5 // 2,
            "tokenizer_type": "char_bpe",
            "vocab_size": 512,
        },
        "training": {
            "steps": args.steps,
            "batch_size": 32,
            "learning_rate": 3e-3,
            "alpha_ce": 1.0,
            "checkpoint_every": 100000,
        },
        "eval": {
            "heldout_per_family": 50,
            "batch_size": 64,
            "max_new_tokens": 24,
            "baselines": [],
        },
    }
    return recipe_from_dict(data, base_dir=ROOT)


def distill_student(recipe: Any) -> Path:
    """Harvest → fuse → distill (SFT), as ``avocado run`` does; returns the student dir."""
    from avocado_llm.distill.pipeline import distill
    from avocado_llm.fusion import fuse_recipe
    from avocado_llm.run import harvest_on_demand

    student = recipe.run_dir / "student"
    if (student / "avocado.json").exists():
        log(f"  {student}: already trained")
        return student
    t0 = time.monotonic()
    # the vLLM servers of `engine: vllm` teachers start only if something is left to ask
    summary = harvest_on_demand(recipe, device="cpu", progress=False)
    if not summary.ok:
        raise RuntimeError(f"harvest of {recipe.name} has failed records")
    log(f"  harvest: {summary}" if len(str(summary)) < 300 else "  harvest done")
    log(f"  harvested in {time.monotonic() - t0:.0f}s; fusing")
    fuse_recipe(recipe, recipe.fusion.strategy, device="cpu", reuse=True, note=log)
    t0 = time.monotonic()
    distill(recipe, use_kd=False, out=student)
    log(f"  distilled in {time.monotonic() - t0:.0f}s → {student}")
    return student


def data_sizes(recipe: Any) -> dict[str, int]:
    """Answers harvested and examples fusion kept for the student."""
    import pyarrow.parquet as pq

    from avocado_llm.fusion import strategy_slug
    from avocado_llm.harvest import read_records

    fused = recipe.run_dir / "fusion" / f"{strategy_slug(recipe.fusion.strategy)}.parquet"
    return {
        "answers_harvested": read_records(recipe.harvest_dir).num_rows,
        "examples_fused": pq.read_metadata(fused).num_rows,
    }


def suspect_check(
    student: Path, served: Path, database_url: str, out: Path, per_family: int
) -> dict[str, Any]:
    """Serve the suspect behind its own API, then ``avocado watermark suspect`` against it."""
    url_db, keys = ledger(out / "suspect-ledger.db", SUSPECT_SECRET, ("customer",))
    with serving(student, url_db, SUSPECT_SECRET) as url:
        env = {"AVOCADO_SECRET": SECRET, "SUSPECT_API_KEY": keys["customer"]["off"]}
        return cli(
            "watermark",
            "suspect",
            "--url",
            url,
            "--api-key-env",
            "SUSPECT_API_KEY",
            "--model-dir",
            str(served),
            "--database-url",
            database_url,
            "--prompts",
            str(per_family),
            "--max-prompts",
            "3000",
            "--save",
            str(out / "suspect-answers.jsonl"),
            env=env,
        )
