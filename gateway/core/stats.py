"""Per-vendor answer statistics: what one minute of answers holds, and what a window of
minutes says (requests, success rate, latency percentiles, errors by class).

A minute's record is a flat list of counters (``FIELDS``): requests, answers below 400,
one counter per answer class, and a small latency histogram with log-spaced bounds. Records
of the same vendor add up field by field, whichever process or host made them, so storage
only ever adds; a window is the sum of its minutes (or of whole hours and the minutes at
its edges, ``cover``). Pure: the time is passed in.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence

from gateway.core.clock import iso_utc

MINUTE = 60
KEEP = 25 * 3600  # seconds a minute is kept: a 24 h window always finds all of its own

# Every answer that is not below 400 falls in one class: the vendor's own answers by
# status, the gateway's errors by what stopped the request; "other" holds the gateway's
# refusals of the caller (400, 401, 403, 413), callers that left (499) and internal errors.
CLASSES = ("vendor_4xx", "vendor_5xx", "vendor_429", "gateway_429", "timeout", "connect", "gateway_503", "other")

# Latency bucket bounds, in seconds: 1 ms to 100 s, eight to a decade (each ~33% above the
# one before), so a percentile read inside a bucket is off by a few percent at most.
BOUNDS = tuple(10 ** (i / 8) / 1000 for i in range(41))

REQUESTS, OK = 0, 1
FIRST_CLASS = 2
FIRST_BUCKET = FIRST_CLASS + len(CLASSES)
FIELDS = ("requests", "ok", *CLASSES, *(f"b{i}" for i in range(len(BOUNDS) + 1)))
WIDTH = len(FIELDS)

WINDOWS = (("5m", 5), ("1h", 60), ("24h", 1440))  # name, minutes (the current one included)

_CLASS = {name: FIRST_CLASS + i for i, name in enumerate(CLASSES)}


def _vendor_class(status: int) -> int:
    if status < 400:
        return OK
    if status == 429:
        return _CLASS["vendor_429"]
    return _CLASS["vendor_4xx"] if status < 500 else _CLASS["vendor_5xx"]


def _gateway_class(status: int) -> int:
    if status < 400:
        return OK
    named = {429: "gateway_429", 503: "gateway_503", 504: "timeout", 502: "connect"}
    return _CLASS[named.get(status, "other")]


def _class(status: int, ours: bool) -> int:
    if status == 499 or status >= 600:  # a caller that left is never the vendor's answer
        return _CLASS["other"]
    return _gateway_class(status) if ours else _vendor_class(status)


# The field an answer counts in, OK or its class: ``OUTCOMES[ours][status]`` for any
# three-digit status, ``ours`` when the gateway made the answer (a problem), not the
# vendor. Tables, as they are read on every answer.
OUTCOMES = tuple(tuple(_class(status, ours) for status in range(1000)) for ours in (False, True))


def bucket(seconds: float) -> int:
    """The field of the latency bucket ``seconds`` falls in (gateway.stats inlines it)."""
    return FIRST_BUCKET + bisect_right(BOUNDS, seconds)


def minute_of(now: float) -> int:
    return int(now // MINUTE)


def to_fields(record: Iterable[int]) -> dict[str, int]:
    """A record as stored: its counters by name, those at zero left out."""
    return {name: value for name, value in zip(FIELDS, record) if value}


def merge(into: list[int], counts: Iterable[int]) -> None:
    for i, value in enumerate(counts):
        into[i] += value


def window_spans(now: float) -> list[tuple[int, int]]:
    """Each window of WINDOWS as its first and last minute (the current one included)."""
    last = minute_of(now)
    return [(last - minutes + 1, last) for _, minutes in WINDOWS]


def cover(first: int, last: int) -> tuple[list[int], list[int]]:
    """Minutes ``first``..``last`` as the whole hours inside them and the minutes left at
    their edges, so that a day is read as about 24 hours and 120 minutes, not 1440."""
    start = -(-first // 60)  # the first hour that begins at or after ``first``
    end = (last + 1) // 60  # the hour after the last one that ends by ``last``
    if start >= end:
        return [], list(range(first, last + 1))
    hours = list(range(start, end))
    minutes = [*range(first, start * 60), *range(end * 60, last + 1)]
    return hours, minutes


def percentile(buckets: list[int], share: float) -> float | None:
    """The latency (ms) below which ``share`` of the answers fell, interpolated inside
    its bucket; None without answers. Beyond the last bound it is that bound."""
    total = sum(buckets)
    if not total:
        return None
    rank = share * total
    seen = 0
    for i, count in enumerate(buckets):
        if count and seen + count >= rank:
            lower = BOUNDS[i - 1] if i else 0.0
            upper = BOUNDS[i] if i < len(BOUNDS) else lower
            return round((lower + (upper - lower) * (rank - seen) / count) * 1000, 1)
        seen += count
    return round(BOUNDS[-1] * 1000, 1)


def summary(fields: Mapping[str, int], last_success: float | None) -> dict[str, object]:
    """One window of a vendor as ``/_gateway/status`` shows it (CONTRACT.md, ``stats``)."""
    record = [int(fields.get(name, 0)) for name in FIELDS]
    requests = record[REQUESTS]
    buckets = record[FIRST_BUCKET:]
    return {
        "requests": requests,
        "success_rate": round(record[OK] / requests, 4) if requests else None,
        "latency_ms": {"p50": percentile(buckets, 0.5), "p95": percentile(buckets, 0.95)},
        "errors": {name: record[FIRST_CLASS + i] for i, name in enumerate(CLASSES)},
        "last_success": iso_utc(last_success) if last_success is not None else None,
    }


def report(windows: Sequence[Mapping[str, int]], last_success: float | None) -> dict[str, object]:
    """A vendor's ``stats``: each window of WINDOWS (``windows`` in that order), and the
    vendor's latest success (also in each window: the page reads it there)."""
    shown: dict[str, object] = {name: summary(fields, last_success) for (name, _), fields in zip(WINDOWS, windows)}
    shown["last_success"] = iso_utc(last_success) if last_success is not None else None
    return shown
