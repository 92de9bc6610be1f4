"""A stand-in for ``python -m vllm.entrypoints.openai.api_server`` in the fast tests: a real
HTTP server process that takes vLLM's command line, answers ``/health`` (503 while its model
loads, then 200) and ``/v1/chat/completions`` / ``/v1/completions`` with a real local model
(greedy or sampled, with top-k log-probabilities in vLLM's shapes), and starts a child process
in its process group as vLLM starts its engine (on SIGTERM it stops it, then itself). Nothing
else of vLLM is imitated.

The tests put a ``vllm/entrypoints/openai/api_server.py`` that runs this file on PYTHONPATH.
Environment: ``STANDIN_RECORD`` (a directory: the command line, pids and the requests are
written there), ``STANDIN_EXIT`` (exit with this code at once, after a line on stderr),
``STANDIN_IGNORE_TERM`` (ignore SIGTERM), ``STANDIN_HEALTH_DELAY_S``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

parser = argparse.ArgumentParser()
for flag in ("--host", "--port", "--model", "--served-model-name", "--dtype", "--max-model-len",
             "--max-logprobs", "--generation-config", "--chat-template"):  # fmt: skip
    parser.add_argument(flag)
parser.add_argument("--disable-uvicorn-access-log", action="store_true")
args, extra = parser.parse_known_args()
record = Path(os.environ["STANDIN_RECORD"]) if os.environ.get("STANDIN_RECORD") else None


lock = threading.Lock()


def write(name: str, data: Any) -> None:
    """The latest of its kind, whole (requests run in threads)."""
    if record is not None:
        path = record / f"{args.served_model_name}-{name}.json"
        with lock:
            path.with_suffix(".tmp").write_text(json.dumps(data))
            path.with_suffix(".tmp").replace(path)


if os.environ.get("STANDIN_EXIT"):
    print("boom: the engine failed to start", file=sys.stderr, flush=True)
    sys.exit(int(os.environ["STANDIN_EXIT"]))
if os.environ.get("STANDIN_IGNORE_TERM"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
engine = subprocess.Popen([sys.executable, "-c", "import time\nwhile True: time.sleep(1)"])
if not os.environ.get("STANDIN_IGNORE_TERM"):  # SIGTERM: stop the engine and exit, as vLLM does

    def shut_down(signum: int, frame: object) -> None:
        engine.terminate()
        engine.wait()
        os._exit(0)

    signal.signal(signal.SIGTERM, shut_down)
write("start", {"argv": sys.argv[1:], "extra": extra, "pid": os.getpid(), "engine": engine.pid,
                "kv_cache": os.environ.get("VLLM_CPU_KVCACHE_SPACE")})  # fmt: skip
state: dict[str, Any] = {"ready": False}


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *a: Any) -> None:
        pass

    def _send(self, status: int, body: Any) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def do_GET(self) -> None:
        if self.path == "/health":
            self._send(200 if state["ready"] else 503, {})
        elif self.path == "/v1/models":
            self._send(200, {"object": "list", "data": [{"id": args.served_model_name}]})
        else:
            self._send(404, {"error": {"message": "not found"}})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        if not state["ready"]:
            self._send(503, {"error": {"message": "loading"}})
        elif body.get("model") != args.served_model_name:
            self._send(404, {"error": {"message": f"no model {body.get('model')}"}})
        elif self.path == "/v1/chat/completions":
            write("chat", body)
            self._send(200, chat(body))
        elif self.path == "/v1/completions":
            write("completions", body)
            self._send(200, completions(body))
        else:
            self._send(404, {"error": {"message": "not found"}})


def chat(body: dict[str, Any]) -> dict[str, Any]:
    from avocado_llm.teachers.base import SamplingParams

    k = int(body.get("top_logprobs") or 0)
    params = SamplingParams(
        temperature=float(body.get("temperature", 1.0)), top_p=float(body.get("top_p", 1.0)),
        max_new_tokens=int(body["max_tokens"]), n=int(body.get("n", 1)), top_logprobs=k,
        seed=int(body.get("seed", 0)),
    )  # fmt: skip
    answers = state["teacher"].generate_sync([body["messages"]], params)[0]
    choices = []
    for i, a in enumerate(answers):
        content = [
            {"token": lp.token, "logprob": lp.logprob,
             "top_logprobs": [{"token": t, "logprob": v}
                              for t, v in zip(lp.top_tokens, lp.top_logprobs, strict=True)]}
            for lp in a.logprobs or []
        ]  # fmt: skip
        choices.append({"index": i, "message": {"role": "assistant", "content": a.text},
                        "logprobs": {"content": content} if k else None,
                        "finish_reason": a.finish_reason})  # fmt: skip
    usage = {"prompt_tokens": answers[0].prompt_tokens,
             "completion_tokens": sum(a.completion_tokens for a in answers)}  # fmt: skip
    return {"object": "chat.completion", "model": args.served_model_name, "choices": choices,
            "usage": usage}  # fmt: skip


def completions(body: dict[str, Any]) -> dict[str, Any]:
    """Greedy text after a plain prompt, cut before the first stop string, vLLM's way."""
    import torch

    teacher = state["teacher"]
    tok, model = teacher.tokenizer, teacher.model
    special = bool(body.get("add_special_tokens", True))
    ids = tok(body["prompt"], add_special_tokens=special, return_tensors="pt")["input_ids"]
    k = int(body.get("logprobs") or 0)
    tokens, values, tops, text, finish = [], [], [], "", "length"
    with torch.inference_mode():
        for _ in range(int(body["max_tokens"])):
            logp = torch.log_softmax(model(ids).logits[0, -1].float(), -1)
            nxt = int(logp.argmax())
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
            piece = tok.decode([nxt])
            tokens.append(piece)
            values.append(float(logp[nxt]))
            top = logp.topk(k) if k else None
            tops.append({tok.decode([int(i)]): float(v) for v, i in zip(*top, strict=True)}
                        if top else None)  # fmt: skip
            if nxt in teacher.eos_ids:
                finish = "stop"
                break
            text += piece
            hits = [text.find(s) for s in body.get("stop") or [] if s in text]
            if hits:
                text, finish = text[: min(hits)], "stop"
                break
    logprobs = {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops} if k else None
    choice = {"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish}
    return {"object": "text_completion", "model": args.served_model_name, "choices": [choice],
            "usage": {"prompt_tokens": 1, "completion_tokens": len(tokens)}}  # fmt: skip


server = ThreadingHTTPServer((args.host, int(args.port)), Handler)
threading.Thread(target=server.serve_forever, daemon=True).start()
print(f"listening on {args.host}:{args.port}", file=sys.stderr, flush=True)
from avocado_llm.teachers.hf import LocalTeacher  # noqa: E402  (slow: after the socket is up)

state["teacher"] = LocalTeacher(args.served_model_name, args.model, device="cpu")
time.sleep(float(os.environ.get("STANDIN_HEALTH_DELAY_S", "0")))
state["ready"] = True
print("ready", file=sys.stderr, flush=True)
threading.Event().wait()
