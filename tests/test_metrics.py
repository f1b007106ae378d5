"""The metrics' children looked up once: they count in the series labels() names."""

from __future__ import annotations

from gateway.metrics import Metrics


def test_a_child_looked_up_once_counts_in_its_series() -> None:
    metrics = Metrics()
    for _ in range(3):
        metrics.requests_of("shop", "GET", "200", "crm").inc()
    metrics.requests_of("shop", "GET", "503", "crm").inc()
    metrics.request_duration_of("shop").observe(0.02)
    assert metrics.requests_of("shop", "GET", "200", "crm") is metrics.requests.labels("shop", "GET", "200", "crm")
    text = metrics.render().decode()
    assert 'gateway_requests_total{caller="crm",method="GET",status="200",vendor="shop"} 3.0' in text
    assert 'gateway_requests_total{caller="crm",method="GET",status="503",vendor="shop"} 1.0' in text
    assert 'gateway_request_duration_seconds_count{vendor="shop"} 1.0' in text
