"""Gateway overhead: the same requests straight to an upstream, and through Avocado's upstream
mode (key check, hold, settle, usage event: the full metering), side by side in one run.

The upstream is a minimal OpenAI-compatible server written on raw asyncio (no framework) that
answers at once with a fixed 5-token answer and its usage, streamed or not as asked. It runs in
its own process, the gateway (``avocado serve --upstream`` as an app, uvicorn) in another, and
the load comes from this process: a raw asyncio HTTP/1.1 client on keep-alive connections (so
that the client's own cost is small and the same for every path). Each setting runs
``concurrency`` closed-loop clients (each sends its next request when the answer arrived):

- ``direct``: the clients call the upstream;
- ``pass-through``: the floor of any gateway built like ours: uvicorn + aiohttp forwarding each
  body to the upstream and its answer back, with no framework, key, ledger or log;
- ``sqlite`` / ``postgresql``: the clients call the gateway, whose ledger is SQLite (WAL) or a
  throwaway PostgreSQL server on loopback; every request is authenticated, held, forwarded,
  settled and recorded (checked at the end: one usage event per request sent);
- ``sqlite+redis`` (``--redis``): as ``sqlite``, with a key whose rpm/tpm limits (too high to
  refuse) are kept in a throwaway Redis: two more Redis round trips per request.

Added latency is the gateway's percentile minus direct's, per concurrency. The last line is
``overhead_p50_ms=<x> overhead_p99_ms=<y> rps_ratio=<metered/direct>`` for SQLite at the
highest concurrency. With closed-loop clients on a saturated CPU, latency is concurrency divided
by throughput (Little's law), so the line also reflects the gateway's CPU cost per request.

    .venv/bin/python bench/gateway_overhead.py [--requests 2000] [--concurrency 1 64] [--redis]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MODEL = "bench-model"
SECRET = "bench-secret-not-for-production"
QUESTION = [{"role": "user", "content": "What is 3 + 4?"}]
ANSWER = ["The", " answer", " is", " 7", "."]
USAGE = {"prompt_tokens": 20, "completion_tokens": len(ANSWER), "total_tokens": 20 + len(ANSWER)}


# --- the upstream: a minimal OpenAI-compatible server on raw asyncio -----------------------------


def _upstream_bodies() -> tuple[bytes, bytes]:
    """The fixed answer as one JSON body and as an SSE stream (with the usage chunk)."""
    base = {"id": "chatcmpl-bench", "created": 0, "model": MODEL}
    message = {"role": "assistant", "content": "".join(ANSWER)}
    whole = {**base, "object": "chat.completion", "usage": USAGE,
             "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}  # fmt: skip
    chunk = {**base, "object": "chat.completion.chunk"}
    events = [{**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}]
    events += [{**chunk, "choices": [{"index": 0, "delta": {"content": t}}]} for t in ANSWER]
    events.append({**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    events.append({**chunk, "choices": [], "usage": USAGE})
    sse = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
    return json.dumps(whole).encode(), sse.encode()


def _response(body: bytes, media: str) -> bytes:
    head = f"HTTP/1.1 200 OK\r\ncontent-type: {media}\r\ncontent-length: {len(body)}\r\n\r\n"
    return head.encode() + body


async def _serve_upstream(sock: socket.socket) -> None:
    whole, sse = _upstream_bodies()
    answers = {False: _response(whole, "application/json"),
               True: _response(sse, "text/event-stream")}  # fmt: skip

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = _content_length(head)
                body = await reader.readexactly(length) if length else b""
                stream = b'"stream": true' in body or b'"stream":true' in body
                writer.write(answers[stream])
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, sock=sock, backlog=1024)
    async with server:
        await server.serve_forever()


def run_upstream(sock: socket.socket) -> None:
    asyncio.run(_serve_upstream(sock))


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


# --- the gateway: Avocado's app in upstream mode ------------------------------------------------


def run_gateway(settings: dict[str, Any], sock: socket.socket, log_file: str) -> None:
    """As ``avocado serve --upstream`` runs it: INFO logging (one access line per request, here
    to a file), uvicorn's own access log off."""
    import logging

    import uvicorn

    from avocado_llm.serve import ServeSettings, create_app

    logging.basicConfig(level=logging.INFO, filename=log_file,
                        format="%(asctime)s %(name)s %(message)s")  # fmt: skip
    app = create_app(ServeSettings(**settings))
    config = uvicorn.Config(app, log_level="warning", access_log=False)
    uvicorn.Server(config).run(sockets=[sock])


def run_passthrough(upstream_url: str, sock: socket.socket) -> None:
    """The floor of any gateway built like ours: uvicorn (uvloop + httptools) and aiohttp
    forwarding each request's body to the upstream and its answer back — no framework, no key,
    no ledger, no log. What it adds to direct is what the extra hop costs on this machine."""
    import aiohttp
    import uvicorn

    session: aiohttp.ClientSession | None = None

    async def app(scope: dict, receive: Any, send: Any) -> None:
        nonlocal session
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                session = aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60),
                    auto_decompress=False,
                    trust_env=False,
                )
                await send({"type": "lifespan.startup.complete"})
            if session is not None:
                await session.close()
            await send({"type": "lifespan.shutdown.complete"})
            return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        assert session is not None
        headers = {"content-type": "application/json"}
        async with session.post(upstream_url, data=body, headers=headers) as response:
            answer = await response.read()
        start = {"type": "http.response.start", "status": response.status,
                 "headers": [(b"content-type", b"application/json")]}  # fmt: skip
        await send(start)
        await send({"type": "http.response.body", "body": answer})

    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    uvicorn.Server(config).run(sockets=[sock])


def prepare_ledger(database_url: str, limited: bool = False) -> str:
    """Migrate, price the model, fund an account; returns a key for it: with rate limits too
    high to refuse anything when ``limited`` (so that every request runs the limiter)."""
    from avocado_llm.billing import MICRO, Billing

    billing = Billing(database_url, SECRET)
    billing.migrate()
    billing.set_price(MODEL, 500_000, 1_500_000, 0)
    billing.create_account("bench", 1_000_000 * MICRO)
    limits = {"rpm": 10**9, "tpm": 10**12} if limited else {}
    _, key = billing.create_key("bench", **limits)  # type: ignore[arg-type]
    billing.close()
    return key


def usage_events(database_url: str) -> int:
    from avocado_llm.billing import Billing

    billing = Billing(database_url, SECRET)
    try:
        return len(billing.usage("bench"))
    finally:
        billing.close()


# --- the load: raw HTTP/1.1 on keep-alive connections -------------------------------------------


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    if b"transfer-encoding: chunked" in head.lower():
        body = b""
        while size := int((await reader.readuntil(b"\r\n"))[:-2], 16):
            body += (await reader.readexactly(size + 2))[:-2]
        await reader.readuntil(b"\r\n")
        return status, body
    return status, await reader.readexactly(_content_length(head))


async def _client(port: int, request: bytes, n: int, latencies: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            writer.write(request)
            await writer.drain()
            status, body = await _read_response(reader)
            latencies.append(time.perf_counter() - t0)
            if status != 200:
                raise RuntimeError(f"answer {status}: {body[:300]!r}")
    finally:
        writer.close()


def http_request(port: int, key: str | None) -> bytes:
    body = json.dumps({"model": MODEL, "messages": QUESTION, "max_tokens": 16}).encode()
    auth = f"authorization: Bearer {key}\r\n" if key else ""
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n{auth}"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n")  # fmt: skip
    return head.encode() + body


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of process ``pid`` (all its threads) so far; 0 without /proc."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Result:
    latencies: list[float]
    seconds: float
    cpu_s: float = 0.0
    """CPU time the server (the gateway, or the upstream for direct) spent on the run."""

    @property
    def cpu_ms_per_request(self) -> float:
        return self.cpu_s / len(self.latencies) * 1000

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.seconds

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def load(
    port: int, key: str | None, concurrency: int, requests: int, pid: int | None = None
) -> Result:
    request = http_request(port, key)
    per_client = max(1, requests // concurrency)
    await asyncio.gather(*(_client(port, request, 3, []) for _ in range(concurrency)))  # warm
    latencies: list[float] = []
    cpu0, t0 = cpu_seconds(pid), time.perf_counter()
    await asyncio.gather(
        *(_client(port, request, per_client, latencies) for _ in range(concurrency))
    )
    return Result(latencies, time.perf_counter() - t0, cpu_seconds(pid) - cpu0)


# --- the run -------------------------------------------------------------------------------------


def listening_socket() -> socket.socket:
    """Bound and listening before its server starts (no port race); given to that process.
    IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and
    without it Nagle's algorithm meets delayed ACKs (40 ms answers)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


def wait_ready(port: int, key: str | None) -> None:
    """One request, answered once the server is up (its socket already queues connections)."""
    asyncio.run(asyncio.wait_for(_client(port, http_request(port, key), 1, []), 300))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="per setting and concurrency")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--no-postgres", action="store_true", help="skip the PostgreSQL ledger")
    parser.add_argument(
        "--redis", action="store_true", help="also SQLite + rate limits shared through Redis"
    )
    args = parser.parse_args()

    spawn = multiprocessing.get_context("spawn")
    workdir = Path(tempfile.mkdtemp(prefix="avocado-bench-"))
    processes: list[Any] = []
    stack: list[Any] = []
    try:
        up_sock = listening_socket()
        up_port = up_sock.getsockname()[1]
        processes.append(spawn.Process(target=run_upstream, args=(up_sock,), daemon=True))
        processes[-1].start()
        ledgers = {"sqlite": f"sqlite:///{workdir / 'ledger.db'}"}
        if not args.no_postgres:
            from avocado_llm.testing.pgtemp import TempPostgres

            pg = TempPostgres().start()
            stack.append(pg)
            ledgers["postgresql"] = pg.create_database("bench")
        redis_url = None
        if args.redis:
            from avocado_llm.testing.redistemp import TempRedis

            redis_server = TempRedis().start()
            stack.append(redis_server)
            redis_url = redis_server.url
            ledgers["sqlite+redis"] = f"sqlite:///{workdir / 'ledger-redis.db'}"
        ports: dict[str, tuple[int, str | None]] = {"direct": (up_port, None)}
        pids: dict[str, int | None] = {"direct": processes[0].pid}
        sock = listening_socket()
        upstream_url = f"http://127.0.0.1:{up_port}/v1/chat/completions"
        processes.append(spawn.Process(target=run_passthrough, args=(upstream_url, sock),
                                       daemon=True))  # fmt: skip
        processes[-1].start()
        ports["pass-through"] = (sock.getsockname()[1], None)
        pids["pass-through"] = processes[-1].pid
        for name, url in ledgers.items():
            key = prepare_ledger(url, limited=name == "sqlite+redis")
            settings = {"upstream_url": f"http://127.0.0.1:{up_port}/v1", "model_name": MODEL,
                        "database_url": url, "secret": SECRET,
                        "upstream_watermark": False}  # not vLLM (the probe)  # fmt: skip
            if name == "sqlite+redis":
                settings["redis_url"] = redis_url
            sock = listening_socket()
            log_file = str(workdir / f"{name}.log")
            gateway = spawn.Process(
                target=run_gateway, args=(settings, sock, log_file), daemon=True
            )
            processes.append(gateway)
            processes[-1].start()
            ports[name] = (sock.getsockname()[1], key)
            pids[name] = gateway.pid
        for port, key in ports.values():
            wait_ready(port, key)

        cpus = len(os.sched_getaffinity(0))
        print(f"requests={args.requests} per setting; cpus={cpus}; upstream answers at once; "
              "non-streamed chat completions, max_tokens=16")  # fmt: skip
        results: dict[tuple[str, int], Result] = {}
        for concurrency in args.concurrency:
            for name, (port, key) in ports.items():
                result = asyncio.run(load(port, key, concurrency, args.requests, pids[name]))
                results[name, concurrency] = result
                direct = results["direct", concurrency]
                added = (
                    ""
                    if name == "direct"
                    else f"  added p50={result.pct(0.5) - direct.pct(0.5):7.2f} ms "
                    f"p99={result.pct(0.99) - direct.pct(0.99):7.2f} ms "
                    f"rps_ratio={result.rps / direct.rps:.3f}"
                )
                print(f"c={concurrency:3d} {name:13s} p50={result.pct(0.5):7.2f} ms "
                      f"p99={result.pct(0.99):7.2f} ms rps={result.rps:8.0f} "
                      f"server_cpu={result.cpu_ms_per_request:.2f} ms/req{added}")  # fmt: skip
        for name, url in ledgers.items():
            sent = sum(len(r.latencies) + 3 * c for (n, c), r in results.items() if n == name)
            events = usage_events(url)
            print(f"{name}: {events} usage events for {sent + 1} requests sent")
            if events != sent + 1:
                print("warning: the ledger does not show one usage event per request")
        top = max(args.concurrency)
        metered, direct = results["sqlite", top], results["direct", top]
        floor = results["pass-through", top]
        print(
            f"floor at c={top}: a bare pass-through proxy adds p50 "
            f"{floor.pct(0.5) - direct.pct(0.5):.2f} ms ({floor.cpu_ms_per_request:.2f} ms CPU per "
            f"request); the metered gateway adds {metered.pct(0.5) - floor.pct(0.5):.2f} ms more "
            f"({metered.cpu_ms_per_request:.2f} ms CPU per request)"
        )
        print(
            f"overhead_p50_ms={metered.pct(0.5) - direct.pct(0.5):.2f} "
            f"overhead_p99_ms={metered.pct(0.99) - direct.pct(0.99):.2f} "
            f"rps_ratio={metered.rps / direct.rps:.3f}"
        )
    finally:
        for process in processes:
            process.terminate()
            process.join(10)
        for item in stack:
            item.stop()
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
