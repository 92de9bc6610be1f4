"""``engine: vllm`` teachers without vLLM: the recipe's checks, the base-model prompt template,
and the server launcher (command line, health wait, logs, stop, no orphans) against a real
HTTP server process that stands in for vLLM's (``vllm_stand_in.py``: vLLM's command line,
``/health`` and ``/v1`` answered by a real zoo model). The real vLLM: ``tests/real``."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest

from avocado_llm.config import RecipeError, recipe_from_dict
from avocado_llm.config.teacher_options import PromptTemplate
from avocado_llm.teachers import load_teacher
from avocado_llm.teachers.answers import chat_shape, parse_completions
from avocado_llm.teachers.base import SamplingParams
from avocado_llm.teachers.hf import LocalTeacher
from avocado_llm.teachers.prompting import jinja_template, stop_cut
from avocado_llm.teachers.vllm_server import (
    MODULE,
    ServerError,
    VllmServer,
    spec_for,
    state_dir,
    vllm_teachers,
)

STAND_IN = Path(__file__).with_name("vllm_stand_in.py")
AVOCADO = [sys.executable, "-m", "avocado_llm.cli"]
BASE = PromptTemplate(
    prefix='Answer in a word.\n\nQ: "{x}" reversed?\nA: x}{"\n\n',
    user="Q: {content}\nA:",
    stop=["\n", "Q:"],
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


def _gone(pids: list[int], within_s: float = 60.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if not any(_alive(p) for p in pids):
            return True
        time.sleep(0.1)
    return False


@pytest.fixture
def stand_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``python -m vllm.entrypoints.openai.api_server`` runs the stand-in; its records go to
    the returned directory."""
    package = tmp_path / "standin" / "vllm" / "entrypoints" / "openai"
    package.mkdir(parents=True)
    for folder in (package, package.parent, package.parent.parent):
        (folder / "__init__.py").write_text("")
    (package / "api_server.py").write_text(
        f"import runpy\nrunpy.run_path({str(STAND_IN)!r}, run_name='__main__')\n"
    )
    record = tmp_path / "record"
    record.mkdir()
    monkeypatch.setenv("AVOCADO_VLLM_PYTHON", sys.executable)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "standin"))
    monkeypatch.setenv("STANDIN_RECORD", str(record))
    return record


def _recipe_data(tmp_path: Path, zoo_dir: Path, **teacher: object) -> dict:
    entry = {"name": "qwen-tiny", "path": str(zoo_dir / "qwen-tiny"), "engine": "vllm",
             "licence": "apache-2.0", **teacher}  # fmt: skip
    return {
        "name": "served",
        "output_dir": str(tmp_path / "runs"),
        "world": {"families": ["arithmetic", "reverse"]},
        "teachers": [entry],
        "harvest": {"prompts_per_family": 4, "max_new_tokens": 6, "top_logprobs": 3,
                    "batch_size": 4, "max_retries": 0},
    }  # fmt: skip


def _recipe(tmp_path: Path, zoo_dir: Path, **teacher: object):
    return recipe_from_dict(_recipe_data(tmp_path, zoo_dir, **teacher), base_dir=tmp_path)


def _started(record: Path, name: str = "qwen-tiny") -> dict:
    return json.loads((record / f"{name}-start.json").read_text())


# --- the recipe ---------------------------------------------------------------------------


def test_recipe_checks_the_engine_and_the_prompt_template(tmp_path: Path, zoo_dir: Path) -> None:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    data = _recipe_data(tmp_path, zoo_dir)
    data["teachers"] += [
        {"name": "remote", "kind": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m",
         "engine": "vllm"},
        {"name": "quantized", "path": str(gguf), "engine": "vllm"},
        {"name": "base", "path": str(zoo_dir / "gemma-tiny"), "chat_template": str(gguf),
         "prompt_template": {"user": "no placeholder", "stop": [""]},
         "vllm": {"extra_args": ["--port=1"], "dtype": "int3", "cuda_devices": "gpu1"}},
    ]  # fmt: skip
    with pytest.raises(RecipeError) as caught:
        recipe_from_dict(data, base_dir=tmp_path)
    problems = {p.path: p.message for p in caught.value.problems}
    assert problems == {
        "teachers[1].engine": "engine: vllm is for local teachers",
        "teachers[2].engine": "vLLM serves an HF safetensors directory, not a GGUF",
        "teachers[3].prompt_template": "chat_template is set too",
        "teachers[3].prompt_template.user": "has no {content}",
        "teachers[3].prompt_template.stop": "needs non-empty stop strings",
        "teachers[3].vllm.extra_args[0]": "'--port=1' is set by Avocado",
        "teachers[3].vllm.dtype": "unknown dtype 'int3'",
        "teachers[3].vllm.cuda_devices": "bad GPU list 'gpu1'",
    }
    recipe = _recipe(tmp_path, zoo_dir)  # the good one loads
    assert recipe.teachers[0].engine == "vllm" and recipe.teachers[0].vllm.kv_cache_gb == 2.0


# --- the prompt template --------------------------------------------------------------------


def test_prompt_template_renders_the_same_text_as_its_chat_template() -> None:
    from transformers.utils.chat_template_utils import render_jinja_template

    odd = "quotes \" ' back\\slash {{ x }} {% if %} {content} \t\x01 é 😀 \u2028 end"
    conversation = [
        {"role": "system", "content": odd},
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": odd},
    ]
    template = PromptTemplate(prefix=odd + "\n\n", system="[{content}]\n", user="Q: {content}\nA:")
    text = template.render(conversation)
    assert text.startswith(odd + "\n\n[" + odd + "]\nQ: What is 2 + 2?\nA: 4\n\nQ: ")
    for bos in ("", "<bos>"):
        rendered, _ = render_jinja_template(
            [conversation], chat_template=jinja_template(template, bos), add_generation_prompt=True
        )
        assert rendered == [bos + text]


def test_stop_cut_keeps_the_tokens_that_begin_inside_the_answer() -> None:
    template = PromptTemplate(stop=["\n", "Q:"])
    # tokens " 4", "2\n", "Q", ":": the answer ends inside "2\n", whose start is kept
    assert stop_cut([" 4", " 42\n", " 42\nQ", " 42\nQ:"], template) == (" 42", 2)
    assert stop_cut([" 4", " 42", " 42\n"], template) == (" 42", 2)  # "\n" alone goes
    assert stop_cut(["\n"], template) == ("", 0)
    assert stop_cut([" 4", " 42"], template) == (" 42", None)


def test_a_completions_answer_becomes_checked_positions() -> None:
    # vLLM 0.32's /v1/completions answer (SmolLM2, logprobs=2), as it came: its end-of-text
    # token, which begins past the text, is not a position of the answer.
    answer = {"choices": [{"index": 0, "text": " Paris", "finish_reason": "stop", "logprobs": {
        "text_offset": [0, 6], "tokens": [" Paris", "<|im_end|>"],
        "token_logprobs": [-0.5, -0.1],
        "top_logprobs": [{" Lyon": -2.0, " Paris": -0.5}, {"<|im_end|>": -0.1, "\n": -2.4}]}}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 2}}  # fmt: skip
    (completion,) = parse_completions(
        chat_shape(answer), 0.1, 2, SamplingParams(max_new_tokens=8, top_logprobs=2)
    )
    assert completion.text == "Paris" and completion.finish_reason == "stop"
    assert [lp.token for lp in completion.logprobs or []] == [" Paris"]
    assert completion.logprobs[0].top_tokens == [" Paris", " Lyon"]  # best first
    assert completion.completion_tokens == 2


def test_in_process_teacher_uses_the_prompt_template(zoo_dir: Path) -> None:
    teacher = LocalTeacher("qwen-tiny", zoo_dir / "qwen-tiny", device="cpu", prompt_template=BASE)
    messages = [{"role": "user", "content": "What is 2 + 2?"}]
    rendered = teacher.tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False
    )
    assert rendered == BASE.render(messages)  # this tokenizer adds no BOS to plain text
    (answer,) = teacher.generate_sync([messages], SamplingParams(max_new_tokens=12))[0]
    assert not any(stop in answer.text for stop in BASE.stop)


# --- the launcher ---------------------------------------------------------------------------


def test_command_line_and_environment(tmp_path: Path, zoo_dir: Path, stand_in: Path) -> None:
    recipe = _recipe(
        tmp_path, zoo_dir, vllm={"kv_cache_gb": 1.5, "extra_args": ["--enforce-eager"]}
    )
    spec = spec_for(recipe.teachers[0], recipe, port=8123)
    command = spec.command()
    assert command[:3] == [sys.executable, "-m", MODULE]
    pairs = dict(zip(command[3::2], command[4::2], strict=False))
    assert pairs["--host"] == "127.0.0.1" and pairs["--port"] == "8123"
    assert pairs["--served-model-name"] == "qwen-tiny" and pairs["--max-logprobs"] == "20"
    assert pairs["--model"] == str(zoo_dir / "qwen-tiny")
    assert pairs["--generation-config"] == "vllm" and pairs["--dtype"] == "bfloat16"
    assert command[-1] == "--enforce-eager"
    assert spec.environment({})["VLLM_CPU_KVCACHE_SPACE"] == "1.5"
    assert "CUDA_VISIBLE_DEVICES" not in spec.environment({})
    recipe = _recipe(tmp_path, zoo_dir, vllm={"cuda_devices": "2,3", "tensor_parallel_size": 2})
    gpu = spec_for(recipe.teachers[0], recipe, port=8123)
    assert gpu.environment({})["CUDA_VISIBLE_DEVICES"] == "2,3"
    assert spec.base_url == "http://127.0.0.1:8123/v1"


def test_servers_wait_for_health_and_stop_with_their_engines(
    tmp_path: Path, zoo_dir: Path, stand_in: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STANDIN_HEALTH_DELAY_S", "1")
    recipe = _recipe(tmp_path, zoo_dir)
    notes: list[str] = []
    with vllm_teachers(recipe, note=notes.append) as urls:
        url = urls["qwen-tiny"]
        assert httpx.get(url.removesuffix("/v1") + "/health").status_code == 200  # waited
        started = _started(stand_in)
        assert started["kv_cache"] == "2"
        assert _alive(started["pid"]) and _alive(started["engine"])
        state = json.loads((state_dir(recipe) / "qwen-tiny.json").read_text())
        assert state["base_url"] == url and state["pid"] == started["pid"]
        models = httpx.get(url + "/models").json()
        assert [m["id"] for m in models["data"]] == ["qwen-tiny"]
    assert _gone([started["pid"], started["engine"]])  # the whole process group
    assert not (state_dir(recipe) / "qwen-tiny.json").exists()
    log = (state_dir(recipe) / "qwen-tiny.log").read_text()
    assert MODULE in log and "ready" in log
    assert any("healthy after" in n for n in notes)


def test_a_server_that_dies_while_starting_is_reported_with_its_log(
    tmp_path: Path, zoo_dir: Path, stand_in: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STANDIN_EXIT", "3")
    recipe = _recipe(tmp_path, zoo_dir)
    with pytest.raises(ServerError) as caught, vllm_teachers(recipe, note=lambda m: None):
        pytest.fail("the block must not run")
    assert "exited (3) before it was healthy" in str(caught.value)
    assert "boom: the engine failed to start" in str(caught.value)
    assert not (state_dir(recipe) / "qwen-tiny.json").exists()


def test_a_server_that_ignores_sigterm_is_killed(
    tmp_path: Path, zoo_dir: Path, stand_in: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STANDIN_IGNORE_TERM", "1")
    recipe = _recipe(tmp_path, zoo_dir)
    folder = state_dir(recipe)
    server = VllmServer(spec_for(recipe.teachers[0], recipe), folder / "t.log", folder / "t.json")
    folder.mkdir(parents=True)
    server.start()
    server.wait_healthy(120)
    started = _started(stand_in)
    server.stop(grace_s=1.0)
    assert _gone([started["pid"], started["engine"]], within_s=5)
    assert server.process is not None and server.process.returncode == -signal.SIGKILL


def _up(tmp_path: Path, zoo_dir: Path) -> tuple[subprocess.Popen[str], str, Path]:
    recipe_file = tmp_path / "served.yaml"
    recipe_file.write_text(json.dumps(_recipe_data(tmp_path, zoo_dir)))

    # Started with SIGINT ignored, as a non-interactive shell starts a background job (CI does):
    # Ctrl-C must still stop the servers.
    def ignore_sigint() -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    up = subprocess.Popen([*AVOCADO, "teachers", "up", str(recipe_file)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, preexec_fn=ignore_sigint)  # fmt: skip
    assert up.stdout is not None
    line = up.stdout.readline()  # printed once the servers are healthy
    assert line.startswith("qwen-tiny\thttp://127.0.0.1:"), up.stderr.read() if up.stderr else ""
    return up, line.split("\t")[1].strip(), recipe_file


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_teachers_up_leaves_no_server_behind(
    tmp_path: Path, zoo_dir: Path, stand_in: Path, sig: signal.Signals
) -> None:
    up, url, _ = _up(tmp_path, zoo_dir)
    started = _started(stand_in)
    assert httpx.get(url.removesuffix("/v1") + "/health").status_code == 200
    up.send_signal(sig)
    code = up.wait(timeout=60)
    # SIGKILL gives the servers no word from `up`: the kernel's parent-death signal ends them.
    assert _gone([started["pid"], started["engine"]])
    assert code == {signal.SIGTERM: 128 + 15, signal.SIGINT: 130, signal.SIGKILL: -9}[sig]


def test_harvest_starts_the_server_when_asked_and_resumes_on_a_new_port(
    tmp_path: Path, zoo_dir: Path, stand_in: Path
) -> None:
    recipe_file = tmp_path / "served.yaml"
    recipe_file.write_text(json.dumps(_recipe_data(tmp_path, zoo_dir)))
    harvest = [*AVOCADO, "harvest", str(recipe_file), "--limit", "4"]
    first = subprocess.run(harvest, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    start = _started(stand_in)
    assert _gone([start["pid"], start["engine"]])  # stopped at the end
    chat = json.loads((stand_in / "qwen-tiny-chat.json").read_text())
    assert chat["model"] == "qwen-tiny" and chat["top_logprobs"] == 3 and chat["logprobs"]
    table = pq.read_table(tmp_path / "runs" / "served" / "harvest" / "data" / "qwen-tiny")
    rows = table.to_pylist()
    assert len(rows) == 4 and all(r["finish_reason"] in ("stop", "length") for r in rows)
    assert all(len(r["top_tokens"][0]) == 3 for r in rows)  # top-3 alternatives per position
    assert all("+vllm-bfloat16" in r["teacher_revision"] for r in rows)

    (stand_in / "qwen-tiny-start.json").unlink()
    again = subprocess.run(harvest, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert not (stand_in / "qwen-tiny-start.json").exists()  # all done: no server started

    more = subprocess.run([*harvest[:-1], "6"], capture_output=True, text=True, timeout=300)
    assert more.returncode == 0, more.stderr
    restart = _started(stand_in)  # a new server, on another port
    assert restart["pid"] != start["pid"] and _gone([restart["pid"], restart["engine"]])
    rows_after = pq.read_table(tmp_path / "runs" / "served" / "harvest" / "data" / "qwen-tiny")
    keys = {r["key"] for r in rows_after.to_pylist()}
    assert len(keys) == 6 and {r["key"] for r in rows} <= keys  # the first 4 still count


def test_base_model_teacher_asks_completions_with_its_template(
    tmp_path: Path, zoo_dir: Path, stand_in: Path
) -> None:
    template = {"prefix": BASE.prefix, "user": BASE.user, "stop": BASE.stop}
    recipe = _recipe(tmp_path, zoo_dir, prompt_template=template)
    messages = [{"role": "user", "content": "What is 2 + 2?"}]
    with vllm_teachers(recipe, note=lambda m: None):
        teacher = load_teacher(recipe.teachers[0], recipe)
        (served,) = asyncio.run(teacher.generate([messages], SamplingParams(max_new_tokens=12)))[0]
    body = json.loads((stand_in / "qwen-tiny-completions.json").read_text())
    assert body["prompt"] == BASE.render(messages) and body["stop"] == BASE.stop
    assert body["logprobs"] == 20 and "messages" not in body
    local = LocalTeacher("qwen-tiny", zoo_dir / "qwen-tiny", device="cpu", prompt_template=BASE)
    (in_process,) = local.generate_sync([messages], SamplingParams(max_new_tokens=12))[0]
    assert served.text == in_process.text  # the same greedy answer from either engine
    assert len(served.logprobs or []) == len(in_process.logprobs or [])


def test_without_a_server_the_teacher_says_how_to_start_one(tmp_path: Path, zoo_dir: Path) -> None:
    recipe = _recipe(tmp_path, zoo_dir)
    with pytest.raises(ServerError, match="avocado teachers up RECIPE"):
        load_teacher(recipe.teachers[0], recipe)
    local = load_teacher(recipe.teachers[0], recipe, device="cpu", in_process=True)
    assert isinstance(local, LocalTeacher)  # scoring callers use the weights themselves


def test_a_harvest_stopped_while_its_server_starts_leaves_none_behind(
    tmp_path: Path, zoo_dir: Path, stand_in: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STANDIN_HEALTH_DELAY_S", "120")
    recipe_file = tmp_path / "served.yaml"
    recipe_file.write_text(json.dumps(_recipe_data(tmp_path, zoo_dir)))
    command = [*AVOCADO, "harvest", str(recipe_file), "--limit", "2"]
    harvest = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    start = stand_in / "qwen-tiny-start.json"
    deadline = time.monotonic() + 120
    while not start.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    started = _started(stand_in)
    harvest.send_signal(signal.SIGTERM)
    assert harvest.wait(timeout=60) == 128 + 15
    assert _gone([started["pid"], started["engine"]])
    assert not (tmp_path / "runs" / "served" / "teachers" / "qwen-tiny.json").exists()


# --- the evaluation ------------------------------------------------------------------------


def test_a_vllm_teacher_is_evaluated_through_its_server(
    tmp_path: Path, zoo_dir: Path, stand_in: Path
) -> None:
    from avocado_llm.evaluate.evaluation import ModelSource, evaluate_model

    recipe = _recipe(tmp_path, zoo_dir)
    source = ModelSource(path=zoo_dir / "qwen-tiny")
    served = evaluate_model(recipe, source, n=6, device="cpu")
    start = _started(stand_in)
    assert _gone([start["pid"], start["engine"]])  # started for the evaluation, then stopped
    chat = json.loads((stand_in / "qwen-tiny-chat.json").read_text())
    assert chat["temperature"] == 0.0 and chat["max_tokens"] == recipe.eval.max_new_tokens
    assert "(vLLM, bfloat16)" in served.entry["source"] and served.entry["role"] == "teacher"
    assert "+vllm-bfloat16" in served.entry["fingerprint"]["input:model"]
    answers = [json.loads(line) for line in served.answers_path.read_text().splitlines()]

    local = evaluate_model(recipe, source, n=6, device="cpu", in_process=True)
    assert local.entry["fingerprint"]["input:model"] != served.entry["fingerprint"]["input:model"]
    again = [json.loads(line) for line in local.answers_path.read_text().splitlines()]
    assert len(answers) == len(again) == 12  # two families × 6
    assert [a["answer"] for a in answers] == [a["answer"] for a in again]  # same greedy answers


def test_run_evaluates_vllm_teachers_on_the_harvests_servers(
    tmp_path: Path, zoo_dir: Path, stand_in: Path
) -> None:
    from avocado_llm.evaluate.report import load_report
    from avocado_llm.run import evaluate_stale, harvest_on_demand
    from avocado_llm.teachers.vllm_server import on_demand

    recipe = _recipe(tmp_path, zoo_dir)
    models = {"qwen-tiny": (zoo_dir / "qwen-tiny", "teacher")}
    with on_demand(recipe, note=lambda m: None) as servers:
        assert harvest_on_demand(recipe, device="cpu", servers=servers).ok
        first = _started(stand_in)
        (stand_in / "qwen-tiny-start.json").unlink()
        evaluate_stale(recipe, models, "cpu", servers)
        assert not (stand_in / "qwen-tiny-start.json").exists()  # the harvest's server served it
        assert _alive(first["pid"])
    assert _gone([first["pid"], first["engine"]])
    entry = load_report(recipe.run_dir / "eval")["models"]["qwen-tiny"]
    assert "(vLLM, bfloat16)" in entry["source"]
    evaluate_stale(recipe, models, "cpu")  # up to date: no server is started
    assert not (stand_in / "qwen-tiny-start.json").exists()


def test_without_vllm_the_evaluation_says_how_to_score_in_process(
    tmp_path: Path, zoo_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from avocado_llm.evaluate.evaluation import ModelSource, evaluate_model
    from avocado_llm.evaluate.runner import EvalError

    monkeypatch.setenv("AVOCADO_VLLM_PYTHON", str(tmp_path / "no-such-python"))
    recipe = _recipe(tmp_path, zoo_dir)
    with pytest.raises(EvalError, match=r"make vllm(.|\n)*avocado eval --in-process"):
        evaluate_model(recipe, ModelSource(path=zoo_dir / "qwen-tiny"), n=2, device="cpu")
    assert not (recipe.run_dir / "eval" / "report.json").exists()  # nothing half-written
