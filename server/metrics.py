"""Prometheus metrics through prometheus-client, one registry per app.

Series (names unchanged since the hand-written exposition):

* ``mta_http_requests_total{route,method,status}`` (counter)
* ``mta_http_request_duration_seconds{route,method}`` (histogram)
* ``mta_adapter_cache_total{result="hit"|"miss"|"not_modified"}`` (counter): adapter
  fetches answered from the in-process archive cache, built (or read from the
  on-disk cache), or answered 304
* ``mta_adapter_bytes_served_total`` (counter): archive bytes sent
* ``mta_adapter_memory_cache_bytes`` (gauge): bytes held by the archive cache
* ``mta_jobs{status}`` (gauge): adapt jobs by status

Gauges are read from callbacks at scrape time (``add_gauges``), so the values are
never stale and the request path pays nothing for them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

# The classic text format: what generate_latest writes and every Prometheus scrapes.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
UNMATCHED_ROUTE = "unmatched"  # any path no route matched: keeps label cardinality bounded
CACHE_RESULTS = ("hit", "miss", "not_modified")

Labels = tuple[tuple[str, str], ...]
GaugeSample = tuple[str, str, Labels, float]

# `*_created` timestamps would add a series per counter that no dashboard of ours reads.
prometheus_client.disable_created_metrics()


class _CallbackGauges(Collector):
    """Gauges computed at scrape time from callbacks yielding ``(name, help, labels, value)``."""

    def __init__(self) -> None:
        self.callbacks: list[Callable[[], Iterable[GaugeSample]]] = []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """One gauge family per name, with every sample the callbacks yield for it."""
        families: dict[str, GaugeMetricFamily] = {}
        for callback in self.callbacks:
            for name, help_text, labels, value in callback():
                family = families.get(name)
                if family is None:
                    family = GaugeMetricFamily(name, help_text, labels=[k for k, _ in labels])
                    families[name] = family
                family.add_metric([v for _, v in labels], value)
        yield from families.values()


class Metrics:
    """The series of one server process, in a registry of their own (apps never share)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._requests = Counter(
            "mta_http_requests",
            "HTTP requests by route template, method and status.",
            ("route", "method", "status"),
            registry=self.registry,
        )
        self._latency = Histogram(
            "mta_http_request_duration_seconds",
            "HTTP request latency, from the first byte in to the last byte out.",
            ("route", "method"),
            buckets=BUCKETS,
            registry=self.registry,
        )
        cache = Counter(
            "mta_adapter_cache",
            "Adapter fetches by how they were answered.",
            ("result",),
            registry=self.registry,
        )
        # Resolved once: labels() costs a lock and a dict lookup on every call.
        self._cache = {result: cache.labels(result) for result in CACHE_RESULTS}
        self._bytes_served = Counter(
            "mta_adapter_bytes_served",
            "Adapter archive bytes sent to clients.",
            registry=self.registry,
        )
        self._gauges = _CallbackGauges()
        self.registry.register(self._gauges)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one finished request and record its latency."""
        self._requests.labels(route, method, str(status)).inc()
        self._latency.labels(route, method).observe(seconds)

    def count_cache(self, result: str) -> None:
        """Count one adapter fetch by how it was answered: hit, miss or not_modified."""
        self._cache[result].inc()

    def count_bytes_served(self, n: int) -> None:
        """Add archive bytes sent to a client."""
        self._bytes_served.inc(n)

    def add_gauges(self, collect: Callable[[], Iterable[GaugeSample]]) -> None:
        """Register a callback yielding ``(name, help, labels, value)`` gauges at scrape time."""
        self._gauges.callbacks.append(collect)

    def render(self) -> bytes:
        """The metrics in the Prometheus text format."""
        return prometheus_client.generate_latest(self.registry)


class MetricsMiddleware:
    """Pure ASGI middleware timing every HTTP request and counting it by route template."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Pass the request through, recording status and latency when it finishes."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # what the client sees if the app raises before answering

        async def send_wrapper(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            # The router writes the matched route into the shared scope dict.
            route = getattr(scope.get("route"), "path", None) or UNMATCHED_ROUTE
            self.metrics.observe_request(
                route, scope["method"], status, time.perf_counter() - start
            )
