"""The prometheus-client exposition parses (strictly) and counts what it is told."""

from __future__ import annotations

from mta.server.metrics import BUCKETS, Metrics
from tests.server.prom import parse_metrics, value


def test_render_parses_and_counts() -> None:
    metrics = Metrics()
    metrics.observe_request("/v1/users/{user_id}", "GET", 200, 0.003)
    metrics.observe_request("/v1/users/{user_id}", "GET", 200, 0.2)
    metrics.observe_request("/v1/users/{user_id}", "GET", 404, 20.0)
    metrics.count_cache("hit")
    metrics.count_cache("miss")
    metrics.count_cache("hit")
    metrics.count_bytes_served(1234)
    metrics.add_gauges(lambda: [("mta_jobs", "Jobs.", (("status", "queued"),), 2)])
    samples = parse_metrics(metrics.render().decode())

    route = {"route": "/v1/users/{user_id}", "method": "GET"}
    assert value(samples, "mta_http_requests_total", **route, status="200") == 2
    assert value(samples, "mta_http_requests_total", **route, status="404") == 1
    hist = "mta_http_request_duration_seconds"
    assert value(samples, f"{hist}_count", **route) == 3
    assert abs(value(samples, f"{hist}_sum", **route) - 20.203) < 1e-9
    assert value(samples, f"{hist}_bucket", **route, le="0.005") == 1
    assert value(samples, f"{hist}_bucket", **route, le="0.25") == 2
    assert value(samples, f"{hist}_bucket", **route, le="10.0") == 2
    assert value(samples, f"{hist}_bucket", **route, le="+Inf") == 3
    buckets = [value(samples, f"{hist}_bucket", **route, le=str(float(b))) for b in BUCKETS]
    assert buckets == sorted(buckets)  # cumulative
    assert value(samples, "mta_adapter_cache_total", result="hit") == 2
    assert value(samples, "mta_adapter_cache_total", result="miss") == 1
    assert ("mta_adapter_cache_total", frozenset({("result", "not_modified")})) in samples
    assert value(samples, "mta_adapter_bytes_served_total") == 1234
    assert value(samples, "mta_jobs", status="queued") == 2


def test_label_values_are_escaped() -> None:
    metrics = Metrics()
    metrics.observe_request('/a"b\\c', "GET", 200, 0.1)
    samples = parse_metrics(metrics.render().decode())
    assert (
        value(samples, "mta_http_requests_total", route='/a\\"b\\\\c', method="GET", status="200")
        == 1
    )


def test_each_app_counts_on_its_own() -> None:
    first, second = Metrics(), Metrics()
    first.count_cache("hit")
    samples = parse_metrics(second.render().decode())
    assert value(samples, "mta_adapter_cache_total", result="hit") == 0
