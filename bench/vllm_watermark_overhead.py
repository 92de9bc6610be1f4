"""The watermark's cost inside vLLM: output tokens per second with and without it, at 1 and 32
concurrent clients, in one run on one vLLM server.

vLLM (``.venv-vllm``, ``make vllm``) serves the model with Avocado's logits processor
(``avocado_watermark.vllm:WatermarkLogitsProcessor``) loaded; a request is watermarked when it
carries the watermark's ``vllm_xargs`` (as the gateway sends them) and plain otherwise, so both
kinds run on the same server, model and cache. The clients call vLLM directly (the gateway's own
cost is ``bench/gateway_overhead.py``'s). Each client asks for ``--max-tokens`` tokens greedily
with ``ignore_eos`` (every answer the same length), closed loop; the plain and watermarked
rounds alternate (``--rounds`` of each, the order flipped every round) so that a drift in the
machine's load falls on both. Reports output tokens/s per setting and the ratio
watermarked / plain; then the processor's own time per decode step (``BatchWatermarks.apply``
on random logits of the model's vocabulary, one thread, greedy and temperature-1 rows): on a
machine whose load drifts, the figure to set beside vLLM's step time.

    .venv/bin/python bench/vllm_watermark_overhead.py --model DIR [--url http://HOST:PORT/v1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
from avocado_watermark.scheme import Watermark
from avocado_watermark.xargs import to_xargs

ROOT = Path(__file__).resolve().parents[1]
MODEL = "served"
TOPICS = ("the sea", "a city", "music", "a forest", "winter", "a journey", "the stars", "bread")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_vllm(
    python: Path, model: Path, log: Path, max_seqs: int, extra: tuple[str, ...] = ()
) -> tuple[subprocess.Popen[bytes], str]:
    """vLLM on the CPU with Avocado's processor (float32, as the in-process engine runs our
    model), serving ``model`` as ``served``; ``extra``: more of vLLM's arguments. Returns the
    process (its own group: :func:`stop_vllm`) and its /v1 URL once it answers."""
    port = free_port()
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_CPU_OMP_THREADS_BIND": "nobind",
           "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}  # fmt: skip
    command = [
        str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
        "--served-model-name", MODEL, "--host", "127.0.0.1", "--port", str(port),
        "--dtype", "float32", "--max-model-len", "2048", "--max-num-seqs", str(max_seqs),
        "--enforce-eager",
        "--logits-processors", "avocado_watermark.vllm:WatermarkLogitsProcessor", *extra,
    ]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 1200
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"vLLM exited {proc.returncode}; see {log}")
        try:
            if httpx.get(url + "/models", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(1)
    os.killpg(proc.pid, signal.SIGTERM)
    raise SystemExit(f"vLLM did not start; see {log}")


def stop_vllm(proc: subprocess.Popen[bytes]) -> None:
    """Stop vLLM and its workers (its process group)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


async def round_of(
    url: str, clients: int, requests: int, max_tokens: int, marked: bool
) -> tuple[int, float]:
    """``clients`` closed-loop clients, ``requests`` each: (output tokens, seconds)."""
    xargs = to_xargs(Watermark(key=123456789, delta=3.0))
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=3600, limits=limits) as http:

        async def client(i: int) -> int:
            produced = 0
            for j in range(requests):
                topic = TOPICS[(i + j) % len(TOPICS)]
                body: dict[str, Any] = {
                    "model": MODEL, "temperature": 0, "max_tokens": max_tokens,
                    "ignore_eos": True,
                    "messages": [{"role": "user", "content": f"Tell a story about {topic}."}],
                }  # fmt: skip
                if marked:
                    body["vllm_xargs"] = xargs
                r = await http.post("/chat/completions", json=body)
                r.raise_for_status()
                produced += int(r.json()["usage"]["completion_tokens"])
            return produced

        t0 = time.perf_counter()
        tokens = sum(await asyncio.gather(*[client(i) for i in range(clients)]))
        return tokens, time.perf_counter() - t0


def processor_step_ms(rows: int, temperature: float, vocab: int, steps: int = 30) -> float:
    """Milliseconds per call of the processor's bias on (rows, vocab) logits."""
    import torch
    from avocado_watermark.batch import BatchWatermarks

    class Params:
        def __init__(self, i: int) -> None:
            self.temperature = temperature
            self.extra_args = to_xargs(Watermark(key=1000 + i, delta=3.0))

    class Update:
        def __init__(self) -> None:
            self.batch_size = rows
            self.removed: list[int] = []
            self.moved: list[Any] = []
            self.added = [(i, Params(i), None, [5, 6, 7]) for i in range(rows)]

    batch = BatchWatermarks()
    batch.update(Update())
    logits = torch.randn(rows, vocab, generator=torch.Generator().manual_seed(0)) * 3
    copies = [logits.clone() for _ in range(steps + 3)]
    for x in copies[:3]:
        batch.apply(x)
    t0 = time.perf_counter()
    for x in copies[3:]:
        batch.apply(x)
    return (time.perf_counter() - t0) / steps * 1e3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="model directory vLLM serves")
    parser.add_argument("--url", help="a running vLLM (with the processor) instead; its model "
                        f"must be served as {MODEL!r}")  # fmt: skip
    parser.add_argument("--vllm-python", type=Path, default=ROOT / ".venv-vllm/bin/python")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--requests", type=int, default=2, help="requests per client per round")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2, help="rounds of each kind [2]")
    parser.add_argument("--vocab", type=int, default=49152, help="vocabulary of the processor's "
                        "own timing [49152: SmolLM2's]")  # fmt: skip
    parser.add_argument("--log", type=Path, default=Path("/tmp/vllm_watermark_overhead.log"))
    args = parser.parse_args()
    proc = None
    if args.url is None:
        if args.model is None:
            parser.error("give --model DIR (or --url of a running vLLM)")
        proc, url = start_vllm(args.vllm_python, args.model, args.log, max(args.clients))
    else:
        url = args.url.rstrip("/")
    try:
        asyncio.run(round_of(url, 1, 1, 8, True))  # warm-up: the processor's first call
        results = []
        for clients in args.clients:
            totals = {False: [0, 0.0], True: [0, 0.0]}
            for r in range(args.rounds):
                for marked in (False, True) if r % 2 == 0 else (True, False):
                    tokens, seconds = asyncio.run(
                        round_of(url, clients, args.requests, args.max_tokens, marked)
                    )
                    totals[marked][0] += tokens
                    totals[marked][1] += seconds
            plain = totals[False][0] / totals[False][1]
            marked_rate = totals[True][0] / totals[True][1]
            row = {"clients": clients, "plain_tokens_per_s": round(plain, 1),
                   "watermarked_tokens_per_s": round(marked_rate, 1),
                   "ratio": round(marked_rate / plain, 3)}  # fmt: skip
            results.append(row)
            print(
                f"{clients:3d} client(s): plain {plain:7.1f} tok/s  watermarked "
                f"{marked_rate:7.1f} tok/s  ratio {marked_rate / plain:.3f}",
                flush=True,
            )
        print(json.dumps(results))
        import torch

        torch.set_num_threads(1)
        vocab = int(httpx.get(url + "/models", timeout=30).json()["data"][0].get("vocab", 0) or 0)
        vocab = vocab or args.vocab
        for clients in args.clients:
            greedy = processor_step_ms(clients, 0.0, vocab)
            drawn = processor_step_ms(clients, 1.0, vocab)
            print(f"processor alone, {clients} row(s) of {vocab} tokens: {greedy:.2f} ms a step "
                  f"greedy, {drawn:.2f} ms at temperature 1")  # fmt: skip
    finally:
        if proc is not None:
            stop_vllm(proc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
