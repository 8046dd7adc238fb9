"""Prometheus metrics in the text exposition format (0.0.4), written by hand.

prometheus_client is not a dependency; the handful of series below is easy to
render and keeping them in one locked object is enough for one process.
Series:

* ``mta_http_requests_total{route,method,status}`` (counter)
* ``mta_http_request_duration_seconds{route,method}`` (histogram)
* ``mta_adapter_cache_total{result="hit"|"miss"|"not_modified"}`` (counter): adapter
  fetches answered from the in-process archive cache, built (or read from the
  on-disk cache), or answered 304
* ``mta_adapter_bytes_served_total`` (counter): archive bytes sent
* ``mta_adapter_memory_cache_bytes`` (gauge): bytes held by the archive cache
* ``mta_jobs{status}`` (gauge): adapt jobs by status
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
UNMATCHED_ROUTE = "unmatched"  # any path no route matched: keeps label cardinality bounded

Labels = tuple[tuple[str, str], ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels) + "}"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class Metrics:
    """Thread-safe counters and a latency histogram for one server process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[Labels, int] = defaultdict(int)
        self._latency_counts: dict[Labels, list[int]] = {}
        self._latency_sum: dict[Labels, float] = defaultdict(float)
        self._cache: dict[str, int] = {"hit": 0, "miss": 0, "not_modified": 0}
        self._bytes_served = 0
        self._gauges: list[Callable[[], Iterable[tuple[str, str, Labels, float]]]] = []

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one finished request and record its latency."""
        key = (("route", route), ("method", method))
        with self._lock:
            self._requests[(*key, ("status", str(status)))] += 1
            counts = self._latency_counts.setdefault(key, [0] * (len(BUCKETS) + 1))
            for i, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    counts[i] += 1
            counts[-1] += 1
            self._latency_sum[key] += seconds

    def count_cache(self, result: str) -> None:
        """Count one adapter fetch by how it was answered: hit, miss or not_modified."""
        with self._lock:
            self._cache[result] += 1

    def count_bytes_served(self, n: int) -> None:
        """Add archive bytes sent to a client."""
        with self._lock:
            self._bytes_served += n

    def add_gauges(self, collect: Callable[[], Iterable[tuple[str, str, Labels, float]]]) -> None:
        """Register a callback yielding ``(name, help, labels, value)`` gauges at scrape time."""
        self._gauges.append(collect)

    def render(self) -> str:
        """The metrics in the Prometheus text format."""
        lines: list[str] = []
        with self._lock:
            requests = dict(self._requests)
            latency = {k: (list(v), self._latency_sum[k]) for k, v in self._latency_counts.items()}
            cache = dict(self._cache)
            bytes_served = self._bytes_served
        lines += [
            "# HELP mta_http_requests_total HTTP requests by route template, method and status.",
            "# TYPE mta_http_requests_total counter",
        ]
        lines += [f"mta_http_requests_total{_labels(k)} {v}" for k, v in sorted(requests.items())]
        name = "mta_http_request_duration_seconds"
        lines += [
            f"# HELP {name} HTTP request latency, from the first byte in to the last byte out.",
            f"# TYPE {name} histogram",
        ]
        for key, (counts, total) in sorted(latency.items()):
            for bound, count in zip((*map(_number, BUCKETS), "+Inf"), counts, strict=True):
                lines.append(f"{name}_bucket{_labels((*key, ('le', bound)))} {count}")
            lines.append(f"{name}_sum{_labels(key)} {_number(total)}")
            lines.append(f"{name}_count{_labels(key)} {counts[-1]}")
        lines += [
            "# HELP mta_adapter_cache_total Adapter fetches by how they were answered.",
            "# TYPE mta_adapter_cache_total counter",
        ]
        lines += [
            f"mta_adapter_cache_total{_labels((('result', k),))} {v}" for k, v in cache.items()
        ]
        lines += [
            "# HELP mta_adapter_bytes_served_total Adapter archive bytes sent to clients.",
            "# TYPE mta_adapter_bytes_served_total counter",
            f"mta_adapter_bytes_served_total {bytes_served}",
        ]
        gauges: dict[str, tuple[str, list[tuple[Labels, float]]]] = {}
        for collect in self._gauges:
            for gname, ghelp, glabels, value in collect():
                gauges.setdefault(gname, (ghelp, []))[1].append((glabels, value))
        for gname, (ghelp, samples) in gauges.items():
            lines += [f"# HELP {gname} {ghelp}", f"# TYPE {gname} gauge"]
            lines += [f"{gname}{_labels(lb)} {_number(v)}" for lb, v in samples]
        return "\n".join(lines) + "\n"


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
