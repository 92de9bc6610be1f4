"""The watermark inside vLLM, end to end on the CPU: vLLM (``.venv-vllm``, ``make vllm``) serves
SmolLM2-135M-Instruct with Avocado's logits processor, ``avocado serve --upstream`` in front of it
meters and passes each account's key; then ``avocado watermark detect`` (unchanged) finds one
account's answers at p < 1e-6 and names that account among several, does not flag unwatermarked
answers, and the in-process engine, under the same account key, gives the same greedy answers.

The figures (p-values, scored tokens, parity shares) are printed and written to
``test-artifacts/vllm_watermark.json``. The model: ``AVOCADO_SMOLLM2_DIR``, else imported once
per session (``tests/real/conftest.py``). This module starts its own vLLM, with the processor,
in float32 and with ``--logprobs-mode processed_logprobs``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from avocado_llm.billing import MICRO, Billing, Plan
from avocado_llm.protect.scheme import Watermark, account_key
from avocado_llm.serve.engine import SamplingOptions
from avocado_llm.serve.local_engine import LocalEngine

pytestmark = pytest.mark.real

ROOT = Path(__file__).resolve().parents[2]
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
ARTIFACTS = ROOT / "test-artifacts"
SECRET = "real-vllm-watermark-secret"
MODEL = "smollm2"
DELTA = 3.0
MAX_TOKENS = 48
ACCOUNTS = ("acme", "globex", "initech", "umbrella", "hooli")
TOPICS = (
    "a cat", "the sea", "autumn", "a lighthouse", "coffee", "a train journey", "rain",
    "a library", "the moon", "a garden", "snow", "a market", "bicycles", "a storm",
    "an old map", "bread", "a mountain", "the city at night", "a violin", "friendship",
    "a river", "a clock", "the desert", "a kite",
)  # fmt: skip
PROMPTS = [[{"role": "user", "content": f"Write two sentences about {t}."}] for t in TOPICS]
RESEARCH = Plan(name="research", max_tokens=64, max_n=2, logprobs=True, max_top_logprobs=3)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def model_dir(smollm2: Path) -> Path:
    """SmolLM2-135M-Instruct as safetensors: ``tests/real/conftest.py``'s import (once per
    session; ``$AVOCADO_SMOLLM2_DIR`` reuses one made before)."""
    return smollm2


def wait_up(url: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited {proc.returncode}: {log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError(f"not up after {timeout_s} s: {log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def vllm_url(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """vLLM on the CPU with the processor (float32, as the in-process engine runs)."""
    if not VLLM_PYTHON.exists():
        pytest.skip("no .venv-vllm: make vllm")
    probe = "import vllm, avocado_watermark.vllm"
    if subprocess.run([str(VLLM_PYTHON), "-c", probe], capture_output=True).returncode != 0:
        pytest.skip("vllm or avocado_watermark missing in .venv-vllm: make vllm")
    port = free_port()
    log = tmp_path_factory.mktemp("vllm") / "vllm.log"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind",
           "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}  # fmt: skip
    command = [
        str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
        "--served-model-name", MODEL, "--host", "127.0.0.1", "--port", str(port),
        "--dtype", "float32", "--max-model-len", "2048", "--max-num-seqs", "32",
        "--enforce-eager", "--logprobs-mode", "processed_logprobs",
        "--logits-processors", "avocado_watermark.vllm:WatermarkLogitsProcessor",
    ]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)  # fmt: skip
    try:
        wait_up(f"http://127.0.0.1:{port}/v1/models", proc, log, timeout_s=900)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def gateway(
    vllm_url: str, model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """``avocado serve --upstream`` (the real command) with five accounts: each one's key on
    the default plan (watermark 3.0), and acme's second key on a plan without one."""
    root = tmp_path_factory.mktemp("gateway")
    url = f"sqlite:///{root / 'ledger.db'}"
    billing = Billing(url, SECRET)
    billing.migrate()
    billing.set_price(MODEL, 100_000, 200_000, 0)
    ids = {name: billing.create_account(name, 100 * MICRO) for name in ACCOUNTS}
    keys = {name: billing.create_key(name)[1] for name in ACCOUNTS}
    unmarked = billing.create_key("acme", plan=Plan(name="unmarked", watermark=0.0))[1]
    research = billing.create_key("acme", plan=RESEARCH)[1]
    billing.close()
    port = free_port()
    log = root / "serve.log"
    env = {**os.environ, "AVOCADO_SECRET": SECRET}
    command = [
        sys.executable, "-m", "avocado_llm.cli", "serve", "--upstream", vllm_url,
        "--model-name", MODEL, "--model", str(model_dir), "--database-url", url,
        "--port", str(port),
    ]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)  # fmt: skip
    try:
        wait_up(f"http://127.0.0.1:{port}/health", proc, log, timeout_s=180)
        yield {"url": f"http://127.0.0.1:{port}/v1", "ids": ids, "keys": keys,
               "unmarked": unmarked, "research": research, "database_url": url}  # fmt: skip
    finally:
        stop(proc)


def ask_all(base_url: str, key: str) -> list[str]:
    """Every prompt at once (vLLM batches them), greedy."""
    client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=1800)

    def one(messages: list[dict[str, str]]) -> str:
        out = client.chat.completions.create(
            model=MODEL,
            messages=messages,
            temperature=0,
            max_tokens=MAX_TOKENS,  # type: ignore[arg-type]
        )
        return out.choices[0].message.content or ""

    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        answers = list(pool.map(one, PROMPTS))
    client.close()
    return answers


def in_process(model_dir: Path, mark: Watermark | None) -> list[str]:
    """The same prompts through Avocado's in-process engine, greedy, batched."""

    async def run() -> list[str]:
        engine = LocalEngine(model_dir, model_name=MODEL, device="cpu", max_batch_size=32)
        await engine.start()
        try:
            options = SamplingOptions(max_tokens=MAX_TOKENS, temperature=0.0, watermark=mark)

            async def collect(messages: list[dict[str, str]]) -> str:
                gen = engine.generate([engine.chat_prompt(messages)], options)
                return "".join([d.text async for d in gen])

            return list(await asyncio.gather(*[collect(m) for m in PROMPTS]))
        finally:
            await engine.aclose()

    return asyncio.run(run())


def detect(model_dir: Path, answers: list[str], ids: dict[str, int], path: Path) -> dict[str, Any]:
    """``avocado watermark detect`` (the CLI, unchanged) over the answers with their prompts."""
    lines = [json.dumps({"messages": m, "text": a}) for m, a in zip(PROMPTS, answers, strict=True)]
    path.write_text("".join(line + "\n" for line in lines))
    out = subprocess.run(
        [sys.executable, "-m", "avocado_llm.cli", "watermark", "detect", str(path),
         "--model", str(model_dir), "--by-account",
         "--accounts", ",".join(str(i) for i in ids.values()), "--json"],
        env={**os.environ, "AVOCADO_SECRET": SECRET}, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(out.stdout)


def parity(model_dir: Path, ours: list[str], theirs: list[str]) -> dict[str, float]:
    """Share of identical answers; share of identical tokens (position by position, over the
    longer answer of each pair)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    same = total = 0
    for a, b in zip(ours, theirs, strict=True):
        ta = tok(a, add_special_tokens=False)["input_ids"]
        tb = tok(b, add_special_tokens=False)["input_ids"]
        same += sum(x == y for x, y in zip(ta, tb, strict=False))
        total += max(len(ta), len(tb))
    answers = sum(a == b for a, b in zip(ours, theirs, strict=True)) / len(ours)
    return {"identical_answers": answers, "identical_tokens": same / max(total, 1)}


def summary(report: dict[str, Any]) -> dict[str, Any]:
    keep = ("account", "p_value", "p_value_corrected", "scored_tokens", "green", "tokens")
    return {k: report[k] for k in keep}


def test_vllm_served_answers_carry_the_accounts_watermark(
    gateway: dict[str, Any], model_dir: Path, tmp_path: Path
) -> None:
    ids = gateway["ids"]
    acme = ids["acme"]
    t0 = time.monotonic()
    marked = ask_all(gateway["url"], gateway["keys"]["acme"])
    t1 = time.monotonic()
    plain = ask_all(gateway["url"], gateway["unmarked"])
    t2 = time.monotonic()
    assert all(marked) and all(plain)
    assert marked != plain  # the watermark changed answers (where the model hesitated)

    found = detect(model_dir, marked, ids, tmp_path / "marked.jsonl")
    clean = detect(model_dir, plain, ids, tmp_path / "plain.jsonl")

    mark = Watermark(account_key(SECRET, acme), DELTA)
    local_marked = in_process(model_dir, mark)
    local_plain = in_process(model_dir, None)
    local_found = detect(model_dir, local_marked, ids, tmp_path / "local.jsonl")
    figures = {
        "model": str(model_dir),
        "prompts": len(PROMPTS),
        "max_tokens": MAX_TOKENS,
        "vllm_seconds": {"marked": round(t1 - t0, 1), "plain": round(t2 - t1, 1)},
        "vllm_marked": summary(found),
        "vllm_plain": summary(clean),
        "in_process_marked": summary(local_found),
        "parity_marked": parity(model_dir, marked, local_marked),
        "parity_plain": parity(model_dir, plain, local_plain),
        "accounts": ids,
    }
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "vllm_watermark.json").write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures, indent=2))

    assert found["account"] == acme and found["p_value"] < 1e-6
    assert found["p_value_corrected"] < 1e-6  # attributed among five accounts
    assert clean["p_value_corrected"] > 1e-3  # unwatermarked text is not flagged
    assert local_found["account"] == acme and local_found["p_value"] < 1e-6
    assert figures["parity_marked"]["identical_answers"] >= 0.75
    assert figures["parity_plain"]["identical_answers"] >= 0.75


def test_a_malformed_or_client_supplied_watermark_is_refused(gateway: dict[str, Any]) -> None:
    client = openai.OpenAI(base_url=gateway["url"], api_key=gateway["keys"]["acme"], max_retries=0)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model=MODEL, messages=PROMPTS[0], max_tokens=4,  # type: ignore[arg-type]
            extra_body={"vllm_xargs": {"avocado_watermark_delta": 0.0}},
        )  # fmt: skip
    assert "vllm_xargs" in e.value.message
    client.close()


def test_the_plans_caps_apply_in_front_of_vllm(gateway: dict[str, Any]) -> None:
    """max_tokens, n and log-probabilities: refused beyond the plan (before vLLM is asked),
    served within it — vLLM's log-probabilities after the processor (processed_logprobs).
    (vLLM refuses n > 1 at temperature 0, which the in-process engine accepts: sampled here.)"""
    url, keys = gateway["url"], gateway["keys"]
    default = openai.OpenAI(base_url=url, api_key=keys["acme"], max_retries=0, timeout=600)
    for extra, param in (
        ({"max_tokens": Plan().max_tokens + 1}, "max_tokens"),
        ({"n": 2}, "n"),
        ({"logprobs": True, "top_logprobs": 1}, "logprobs"),
    ):
        with pytest.raises(openai.BadRequestError) as e:
            default.chat.completions.create(model=MODEL, messages=PROMPTS[0], **extra)  # type: ignore[arg-type]
        assert e.value.body["param"] == param  # type: ignore[index]
    research = openai.OpenAI(base_url=url, api_key=gateway["research"], max_retries=0, timeout=600)
    with pytest.raises(openai.BadRequestError):
        research.chat.completions.create(
            model=MODEL,
            messages=PROMPTS[0],
            logprobs=True,
            top_logprobs=4,  # type: ignore[arg-type]
        )
    out = research.chat.completions.create(
        model=MODEL, messages=PROMPTS[0], n=2, max_tokens=6, temperature=0.8, seed=7,  # type: ignore[arg-type]
        logprobs=True, top_logprobs=3,
    )  # fmt: skip
    assert len(out.choices) == 2 and out.usage is not None
    assert out.usage.completion_tokens <= 2 * 6
    for choice in out.choices:
        assert choice.logprobs is not None and choice.logprobs.content
        assert all(len(t.top_logprobs) == 3 for t in choice.logprobs.content)
    default.close()
    research.close()


def test_the_gateway_refuses_vllm_without_the_processor(
    vllm: str, vllm_url: str, tmp_path: Path
) -> None:
    """vLLM without ``--logits-processors`` (conftest's, for the tools tests) would serve
    unmarked text: the gateway's probe tells it from this module's vLLM with the processor, and
    ``avocado serve --upstream`` refuses to start in front of it."""
    import aiohttp

    from avocado_llm.serve.upstream_probe import MISSING, Verdict, probe

    if os.environ.get("AVOCADO_SMOLLM2_VLLM"):
        pytest.skip("conftest's vLLM is one given by $AVOCADO_SMOLLM2_VLLM (maybe with it)")

    async def verdict(url: str) -> Verdict:
        async with aiohttp.ClientSession() as session:
            return await probe(session, url, MODEL)

    assert asyncio.run(verdict(vllm_url)) is Verdict.MARKS
    assert asyncio.run(verdict(vllm)) is Verdict.MISSING
    command = [sys.executable, "-m", "avocado_llm.cli", "serve", "--upstream", vllm,
               "--model-name", MODEL, "--database-url", f"sqlite:///{tmp_path / 'l.db'}",
               "--port", str(free_port())]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "AVOCADO_SECRET": SECRET})  # fmt: skip
    assert done.returncode == 1 and MISSING in done.stderr, done.stderr[-2000:]
