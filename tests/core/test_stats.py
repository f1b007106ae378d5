"""The stats' pure part: answer classes, the latency histogram, windows of minutes."""

from __future__ import annotations

import pytest

from gateway.core.stats import (
    BOUNDS, CLASSES, FIELDS, FIRST_BUCKET, OK, WIDTH, bucket, cover, merge, OUTCOMES, percentile, report, summary,
    to_fields, window_spans,
)


@pytest.mark.parametrize(
    ("status", "ours", "counted_as"),
    [
        (200, False, "ok"), (304, False, "ok"), (201, True, "ok"),
        (404, False, "vendor_4xx"), (422, False, "vendor_4xx"), (429, False, "vendor_429"),
        (500, False, "vendor_5xx"), (503, False, "vendor_5xx"),
        (429, True, "gateway_429"), (503, True, "gateway_503"), (504, True, "timeout"), (502, True, "connect"),
        (401, True, "other"), (413, True, "other"), (500, True, "other"), (499, False, "other"), (499, True, "other"),
        (700, False, "other"), (999, True, "other"),
    ],
)
def test_each_answer_counts_in_one_class(status: int, ours: bool, counted_as: str) -> None:
    assert FIELDS[OUTCOMES[ours][status]] == counted_as


def record(*answers: tuple[int, bool, float]) -> list[int]:
    counts = [0] * WIDTH
    for status, ours, seconds in answers:
        counts[0] += 1
        counts[OUTCOMES[ours][status]] += 1
        counts[bucket(seconds)] += 1
    return counts


def test_a_window_says_requests_success_rate_and_errors_by_class() -> None:
    counts = record(*[(200, False, 0.05)] * 8, (502, False, 0.05), (500, False, 0.05))
    shown = summary(to_fields(counts), 1_700_000_000.25)
    assert shown["requests"] == 10
    assert shown["success_rate"] == 0.8
    assert shown["errors"] == {**{name: 0 for name in CLASSES}, "vendor_5xx": 2}
    assert shown["last_success"] == "2023-11-14T22:13:20.250Z"


def test_gateway_errors_count_in_the_success_rate() -> None:
    counts = record((200, False, 0.01), (200, False, 0.01), (200, False, 0.01), (429, True, 0.0))
    shown = summary(to_fields(counts), None)
    assert shown["success_rate"] == 0.75
    assert shown["errors"]["gateway_429"] == 1  # type: ignore[index]
    assert shown["last_success"] is None


def test_a_window_without_answers_has_no_rate_nor_latency() -> None:
    shown = summary({}, None)
    assert shown == {"requests": 0, "success_rate": None, "latency_ms": {"p50": None, "p95": None},
                     "errors": {name: 0 for name in CLASSES}, "last_success": None}


def test_percentiles_fall_inside_the_bucket_of_the_latencies() -> None:
    counts = record(*[(200, False, 0.100)] * 95, *[(200, False, 2.0)] * 5)
    buckets = counts[FIRST_BUCKET:]
    p50 = percentile(buckets, 0.5)
    p95 = percentile(buckets, 0.95)
    assert p50 is not None and p95 is not None
    assert 100 / 1.34 <= p50 <= 100 * 1.34
    assert 100 / 1.34 <= p95 <= 100 * 1.34  # the 95th of 100 is still one of the fast ones
    assert percentile(buckets, 0.99) is not None and percentile(buckets, 0.99) >= 2000 / 1.34  # type: ignore[operator]


def test_latencies_beyond_the_last_bound_are_reported_as_it() -> None:
    buckets = record((200, False, 500.0))[FIRST_BUCKET:]
    assert percentile(buckets, 0.5) == round(BOUNDS[-1] * 1000, 1)
    assert percentile(record((200, False, 0.0))[FIRST_BUCKET:], 0.5) == 0.5  # below 1 ms: inside [0, 1)


def test_records_of_several_processes_add_up() -> None:
    one = record((200, False, 0.01), (500, False, 0.2))
    other = record((200, False, 0.01))
    merge(one, other)
    assert one[0] == 3 and one[OK] == 2
    assert to_fields(one) == {"requests": 3, "ok": 2, "vendor_5xx": 1,
                              f"b{bucket(0.01) - FIRST_BUCKET}": 2, f"b{bucket(0.2) - FIRST_BUCKET}": 1}


def test_windows_end_with_the_current_minute() -> None:
    now = 1000 * 60 + 30.0  # half way through minute 1000
    assert window_spans(now) == [(996, 1000), (941, 1000), (1000 - 1439, 1000)]


@pytest.mark.parametrize(("first", "last"), [(0, 59), (5, 64), (61, 1500), (1000 - 1439, 1000), (10, 20), (59, 120)])
def test_a_span_is_covered_by_whole_hours_and_the_minutes_at_its_edges(first: int, last: int) -> None:
    hours, minutes = cover(first, last)
    covered = sorted([m for h in hours for m in range(h * 60, h * 60 + 60)] + minutes)
    assert covered == list(range(first, last + 1))
    assert len(minutes) <= 118


def test_a_day_reads_about_24_hours_and_the_minutes_at_its_edges() -> None:
    hours, minutes = cover(1000 - 1439, 1000)
    assert len(hours) == 23 and len(minutes) == 60


def test_the_report_has_every_window_and_the_latest_success() -> None:
    fields = to_fields(record((200, False, 0.01)))
    shown = report([fields, fields, fields], 1_700_000_000.0)
    assert list(shown) == ["5m", "1h", "24h", "last_success"]
    assert shown["last_success"] == "2023-11-14T22:13:20.000Z"
    assert shown["1h"]["last_success"] == shown["last_success"]  # type: ignore[index]

