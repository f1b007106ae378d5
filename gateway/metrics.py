"""The gateway's Prometheus metrics.

Each app owns a registry (so tests can run several apps in one process). With
``workers`` > 1 the processes write their values to files in PROMETHEUS_MULTIPROC_DIR
(set by the supervisor before prometheus_client is imported) and every process's
``/metrics`` reads them all, so any worker reports the sum over all.
"""

from __future__ import annotations

import os
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# The *_created series double every counter's output and no dashboard of ours reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

M = TypeVar("M", Counter, Gauge, Histogram)


class Children(Generic[M]):
    """A metric's children by their label values, each looked up in prometheus_client once
    (its ``labels`` costs more than the count it leads to). For the metrics every request
    counts; none of them ever removes a child."""

    def __init__(self, metric: M) -> None:
        self._metric: M = metric
        self._known: dict[tuple[str, ...], M] = {}

    def __call__(self, *values: str) -> M:
        child = self._known.get(values)
        if child is None:
            child = self._known[values] = self._metric.labels(*values)
        return child


_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "gateway_requests_total",
            "Requests answered by the gateway",
            ["vendor", "method", "status", "caller"],
            registry=self.registry,
        )
        self.request_duration = Histogram(
            "gateway_request_duration_seconds",
            "Time from a request's arrival to the start of its answer",
            ["vendor"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.upstream_requests = Counter(
            "gateway_upstream_requests_total",
            "Upstream attempts by outcome (status code, timeout, connect)",
            ["vendor", "method", "outcome"],
            registry=self.registry,
        )
        self.upstream_duration = Histogram(
            "gateway_upstream_duration_seconds",
            "Time an upstream attempt took until its response headers",
            ["vendor"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.errors = Counter(
            "gateway_errors_total",
            "Errors the gateway itself made (never the vendor's own answers), by problem type",
            ["vendor", "type"],
            registry=self.registry,
        )
        self.retries = Counter(
            "gateway_retries_total",
            "Upstream attempts repeated, by the reason of the failed one",
            ["vendor", "reason"],
            registry=self.registry,
        )
        self.requests_of = Children(self.requests)
        self.request_duration_of = Children(self.request_duration)
        self.upstream_requests_of = Children(self.upstream_requests)
        self.upstream_duration_of = Children(self.upstream_duration)

        self.budget_exhausted = Counter(
            "gateway_budget_exhausted_total",
            "Requests a budget could not admit at once (they waited or got 429; shadow budgets too)",
            ["vendor", "budget"],
            registry=self.registry,
        )
        self.budget_wait = Histogram(
            "gateway_budget_wait_seconds",
            "Time admitted attempts were held for budget",
            ["vendor"],
            buckets=(0.0, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
            registry=self.registry,
        )

        self.cache_requests = Counter(
            "gateway_cache_requests_total",
            "Requests on cached routes by result (hit, miss, stale, bypass)",
            ["vendor", "result"],
            registry=self.registry,
        )

        self.credential_refreshes = Counter(
            "gateway_credential_refreshes_total",
            "Access token refreshes by result",
            ["vendor", "result"],
            registry=self.registry,
        )

        # These gauges mirror shared state that any worker may update: with workers the
        # value last written by any of them is the true one.
        self.circuit_state = Gauge(
            "gateway_circuit_state",
            "Circuit breaker state: 0 closed, 1 half-open, 2 open",
            ["vendor"],
            multiprocess_mode="livemostrecent",
            registry=self.registry,
        )

        self.credential_state = Gauge(
            "gateway_credential_state",
            "Credential state: 0 ok (or static), 1 failing (the token endpoint), 2 rejected (the auth stop)",
            ["vendor"],
            multiprocess_mode="livemax",
            registry=self.registry,
        )
        self.budget_remaining = Gauge(
            "gateway_budget_remaining",
            "Units left in a budget after the latest request charged to it (per caller: that caller's)",
            ["vendor", "budget"],
            multiprocess_mode="livemostrecent",
            registry=self.registry,
        )
        self.budget_exhaustion = Gauge(
            "gateway_budget_exhaustion_seconds",
            "Seconds until a budget runs out at the last hour's rate (absent when it does not)",
            ["vendor", "budget"],
            multiprocess_mode="livemostrecent",
            registry=self.registry,
        )
        self.last_success = Gauge(
            "gateway_last_success_timestamp_seconds",
            "Unix time of the vendor's latest answer below 400",
            ["vendor"],
            multiprocess_mode="max",
            registry=self.registry,
        )
        self.last_success_of = Children(self.last_success)
        self.storage_fallback = Gauge(
            "gateway_storage_fallback",
            "1 while shared storage fails and budgets follow on_storage_error",
            multiprocess_mode="livemax",
            registry=self.registry,
        )

        self.dead_letters = Gauge(
            "gateway_dead_letters",
            "Dead letters kept, per vendor",
            ["vendor"],
            multiprocess_mode="livemostrecent",
            registry=self.registry,
        )
        self.dead_letters_lost = Counter(
            "gateway_dead_letters_lost_total",
            "Failed writes that should have been kept as dead letters but could not be stored"
            " (each is logged at ERROR with its request id)",
            ["vendor"],
            registry=self.registry,
        )

        self.config_reloads = Counter(
            "gateway_config_reloads_total",
            "Reloads of the config and policies, by result (error: the old snapshot stayed in force)",
            ["result"],
            registry=self.registry,
        )
        for result in ("ok", "error"):
            self.config_reloads.labels(result)
        self.config_loaded = Gauge(
            "gateway_config_last_reload_success_timestamp_seconds",
            "When the snapshot in force was loaded (at start, then at each applied reload)",
            multiprocess_mode="livemax",
            registry=self.registry,
        )

    def render(self) -> bytes:
        directory = os.environ.get(MULTIPROC_ENV)
        if directory:
            merged = CollectorRegistry()
            MultiProcessCollector(merged, path=directory)  # type: ignore[no-untyped-call]
            return bytes(generate_latest(merged))
        return bytes(generate_latest(self.registry))
