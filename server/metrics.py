"""Prometheus metrics, served on a side port: requests, stage latencies, batching, bundle."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    """All of the server's metrics in one registry (one per server, so tests stay isolated)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "irec_requests",
            "Requests (stream messages count one each) by RPC and status code",
            ["rpc", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "irec_request_seconds",
            "Time per request by stage: queue, tokenize, encode, search, total",
            ["rpc", "stage"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "irec_batch_size",
            "Requests per encoder run",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "irec_queue_depth", "Requests waiting to be batched", registry=self.registry
        )
        self.bundle = Gauge(
            "irec_bundle_info", "The served bundle (value 1)", ["version"], registry=self.registry
        )
        self._latency_children: dict[tuple[str, str], Any] = {}
        self._request_children: dict[tuple[str, str], Any] = {}

    def watch_queue(self, depth: Callable[[], int]) -> None:
        """Read the queue depth at scrape time."""
        self.queue_depth.set_function(lambda: float(depth()))

    def serving(self, version: str) -> None:
        """Mark `version` as the served bundle (and no other)."""
        self.bundle.clear()
        self.bundle.labels(version=version).set(1)

    def observe_stages(self, rpc: str, **stages_ms: float) -> None:
        """Record per-stage milliseconds of one request.

        The labelled children are looked up once per (rpc, stage) and kept: prometheus'
        `labels()` costs more than the observation itself (the server profile in
        benchmarks/results shows it).
        """
        children = self._latency_children
        for stage, ms in stages_ms.items():
            child = children.get((rpc, stage))
            if child is None:
                child = children[(rpc, stage)] = self.latency.labels(rpc=rpc, stage=stage)
            child.observe(ms / 1e3)

    def count(self, rpc: str, code: str) -> None:
        """Count one finished request by RPC and status code name."""
        child = self._request_children.get((rpc, code))
        if child is None:
            child = self._request_children[(rpc, code)] = self.requests.labels(rpc=rpc, code=code)
        child.inc()

    def serve_http(self, host: str, port: int) -> int:
        """Expose /metrics on host:port (0 = any free port); return the port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return int(server.server_port)
