"""An app served on loopback from a background thread, for as long as a ``with`` block lasts:
what the tests, the benchmarks and notebooks use to talk real HTTP to an Avocado server.

    with serve_in_thread(create_app(settings)) as origin:   # "http://127.0.0.1:PORT"
        openai.OpenAI(base_url=f"{origin}/v1", api_key=key)...
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

START_TIMEOUT_S = 60.0


@contextmanager
def serve_in_thread(app: Any, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve ``app`` (ASGI, lifespan on) on ``host`` and ``port`` (0: a free one) until the
    block ends; yields its origin. The server stops when the block ends, however it ends."""
    import uvicorn

    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", access_log=False, lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="avocado-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError("the server did not start (see the log above)")
        time.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        if thread.is_alive():
            server.force_exit = True
            thread.join(timeout=5)
