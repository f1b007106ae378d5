"""The circuit breaker's state machine, pure: the clock is passed in.

    closed ──(failure ratio ≥ threshold over the window, with ≥ min_calls)──> open
    open ──(open_for elapsed)──> half-open: exactly one probe is let through
    half-open ──probe succeeds──> closed (window cleared)
    half-open ──probe fails──> open again for open_for

Outcomes are counted in ten buckets per window (a sliding window of buckets). A probe
whose answer never comes (its process died) frees its place after ``open_for``.
The Redis script ``breaker.lua`` implements the same arithmetic for shared state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from gateway.config.model import CircuitBreaker

BUCKETS = 10
CLOSED, HALF_OPEN, OPEN = 0, 1, 2  # the values of gateway_circuit_state
STATE_NAMES = {CLOSED: "closed", HALF_OPEN: "half-open", OPEN: "open"}


@dataclass(frozen=True)
class Admission:
    allowed: bool
    probe: bool = False
    retry_after: float = 0.0
    state: int = CLOSED


def is_failure(status: int | None, failure: str | None) -> bool:
    """What counts against the vendor: 5xx, timeouts and connection failures (not 429)."""
    return failure is not None or (status is not None and status >= 500)


@dataclass
class BreakerState:
    opened_until: float = 0.0  # 0: closed
    probing_until: float = 0.0  # a probe is out until then
    buckets: dict[int, list[int]] = field(default_factory=dict)  # bucket -> [calls, failures]

    def state(self, now: float) -> int:
        if not self.opened_until:
            return CLOSED
        return OPEN if now < self.opened_until else HALF_OPEN

    def admit(self, config: CircuitBreaker, now: float) -> Admission:
        if not self.opened_until:
            return Admission(True)
        if now < self.opened_until:
            return Admission(False, retry_after=self.opened_until - now, state=OPEN)
        if now < self.probing_until:
            return Admission(False, retry_after=self.probing_until - now, state=HALF_OPEN)
        self.probing_until = now + config.open_for
        return Admission(True, probe=True, state=HALF_OPEN)

    def record(self, config: CircuitBreaker, now: float, failure: bool, probe: bool) -> int:
        """Count one outcome; the state after it."""
        if probe:
            self.probing_until = 0.0
            if failure:
                self.opened_until = now + config.open_for
                return OPEN
            self.opened_until = 0.0
            self.buckets.clear()
            return CLOSED
        width = config.window / BUCKETS
        current = int(now // width)
        for old in [b for b in self.buckets if b <= current - BUCKETS]:
            del self.buckets[old]
        counts = self.buckets.setdefault(current, [0, 0])
        counts[0] += 1
        counts[1] += int(failure)
        if self.opened_until:
            return OPEN if now < self.opened_until else HALF_OPEN
        calls = sum(c[0] for c in self.buckets.values())
        failures = sum(c[1] for c in self.buckets.values())
        if calls >= config.min_calls and failures >= config.failure_ratio * calls:
            self.opened_until = now + config.open_for
            return OPEN
        return CLOSED

    def to_record(self) -> dict[str, object]:
        """The state as plain JSON values, to be kept across a restart. A probe out is not
        kept: after a restart no answer to it can come, so the next request probes."""
        return {"opened_until": self.opened_until, "buckets": [[b, *counts] for b, counts in self.buckets.items()]}

    @classmethod
    def from_record(cls, record: object) -> BreakerState:
        """A state read back from ``to_record``; ValueError for anything else."""
        if not isinstance(record, dict):
            raise ValueError("not a breaker state")
        opened_until, buckets = record.get("opened_until"), record.get("buckets")
        if isinstance(opened_until, bool) or not isinstance(opened_until, int | float) or not math.isfinite(opened_until):
            raise ValueError(f"opened_until {opened_until!r} is not a finite number")
        if not isinstance(buckets, list) or not all(
            isinstance(row, list) and len(row) == 3 and all(type(n) is int for n in row) for row in buckets
        ):
            raise ValueError("breaker buckets are not a list of [bucket, calls, failures]")
        return cls(opened_until=float(opened_until), buckets={row[0]: [row[1], row[2]] for row in buckets})

    def lasts_until(self, config: CircuitBreaker) -> float:
        """When the state stops mattering: never while open or half-open; once closed, when
        its last counted outcome leaves the window."""
        if self.opened_until:
            return math.inf
        if not self.buckets:
            return 0.0
        return (max(self.buckets) + BUCKETS) * config.window / BUCKETS
