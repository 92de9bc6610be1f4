"""Requests and errors per minute for the operator console, from the same counter that
``/metrics`` exports (``avocado_requests_total`` by endpoint and status).

The counter is cumulative; a sampler reads it every few seconds and keeps an hour of samples,
so a minute's count is the difference of the counter across it. The console's own pages are
left out (their endpoints are named ``console_*``): operators watching the dashboard do not
show up as traffic. With several worker processes each one counts its own requests, like
``/metrics`` does.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime

from avocado_llm.telemetry.metrics import Metrics

SAMPLE_EVERY_S = 5.0
KEEP_S = 3600.0


@dataclass(frozen=True)
class Sample:
    at: float  # unix time
    requests: int
    client_errors: int  # 4xx: refused (bad request, no credit, rate limited, …)
    server_errors: int  # 5xx


class RateSampler:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._samples: deque[Sample] = deque()
        self._lock = threading.Lock()
        self._samples.append(Sample(time.time(), 0, 0, 0))  # the counter starts at zero
        self.sample()

    def read(self) -> Sample:
        requests = client = server = 0
        for family in self.metrics.requests.collect():
            for s in family.samples:
                if not s.name.endswith("_total"):
                    continue
                if s.labels.get("endpoint", "").startswith("console_"):
                    continue
                value = int(s.value)
                requests += value
                status = s.labels.get("status", "")
                if status.startswith("4"):
                    client += value
                elif status.startswith("5"):
                    server += value
        return Sample(time.time(), requests, client, server)

    def sample(self) -> Sample:
        now = self.read()
        with self._lock:
            self._samples.append(now)
            while len(self._samples) > 2 and now.at - self._samples[1].at > KEEP_S:
                self._samples.popleft()
        return now

    async def run(self) -> None:
        while True:
            await asyncio.sleep(SAMPLE_EVERY_S)
            self.sample()

    def _at(self, t: float) -> Sample:
        """The counter's value at time ``t``: the last sample taken at or before it."""
        best = self._samples[0]
        for s in self._samples:
            if s.at > t:
                break
            best = s
        return best

    def per_minute(self, minutes: int = 30) -> list[dict[str, object]]:
        """One row per wall-clock minute, oldest first; the last one is the current minute."""
        now = self.sample()
        current = int(now.at // 60) * 60
        rows = []
        with self._lock:
            for start in range(current - 60 * (minutes - 1), current + 1, 60):
                end = min(start + 60, now.at)
                a, b = self._at(start), (now if end >= now.at else self._at(end))
                rows.append(
                    {
                        "minute": datetime.fromtimestamp(start, UTC).strftime("%H:%M"),
                        "requests": b.requests - a.requests,
                        "client_errors": b.client_errors - a.client_errors,
                        "server_errors": b.server_errors - a.server_errors,
                    }
                )
        return rows

    def last_60s(self) -> dict[str, int]:
        now = self.sample()
        with self._lock:
            then = self._at(now.at - 60)
        return {
            "requests": now.requests - then.requests,
            "client_errors": now.client_errors - then.client_errors,
            "server_errors": now.server_errors - then.server_errors,
            "total_requests": now.requests,
        }
