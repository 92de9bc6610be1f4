"""Prometheus metrics of one app, in its own registry (two apps in a process do not mix).

``GET /metrics`` serves them in the text exposition format. With several uvicorn workers each
process counts its own requests; set ``PROMETHEUS_MULTIPROC_DIR`` to aggregate them.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """Every series the server records."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "avocado_requests",
            "Answered HTTP requests, by endpoint (its function), model and status.",
            ["endpoint", "model", "status"],
            registry=self.registry,
        )
        self.tokens = Counter(
            "avocado_tokens",
            "Tokens billed, by model and kind (prompt or completion).",
            ["model", "kind"],
            registry=self.registry,
        )
        self.charged = Counter(
            "avocado_charged_micro_usd",
            "Money charged for requests, in micro-USD.",
            ["model"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "avocado_request_seconds",
            "Time from a request's arrival to its last byte.",
            ["endpoint"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "avocado_requests_in_flight",
            "Requests being generated now.",
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "avocado_batch_requests",
            "Requests decoded together in one batch of the in-process engine.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "avocado_rate_limited",
            "Requests refused by a rate limit, by limit (requests or tokens).",
            ["limit"],
            registry=self.registry,
        )

    def observe_batch(self, requests: int) -> None:
        self.batch_size.observe(requests)

    def render(self) -> bytes:
        return generate_latest(self.registry)
