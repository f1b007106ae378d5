"""When a budget runs out at the last hour's rate: what the process spent per minute, and
the forecast from it and the budget's level. Pure: the clock is passed in."""

from __future__ import annotations

from collections import deque

from gateway.core.budget import BUCKET, FIXED

HOUR = 3600.0
MINUTE = 60.0


class Consumption:
    """Units spent per minute over the last hour, with their running sum (so that reading
    the rate costs the same at any request rate)."""

    def __init__(self) -> None:
        self._minutes: deque[list[float]] = deque()  # [minute start, units], oldest first
        self._total = 0.0

    def add(self, units: float, now: float) -> None:
        start = now - now % MINUTE
        if self._minutes and self._minutes[-1][0] == start:
            self._minutes[-1][1] += units
        else:
            self._minutes.append([start, units])
        self._total += units
        self._forget(now)

    def rate(self, now: float) -> float:
        """Units a second over the last hour. A process up for less than an hour knows
        less than the hour's units: it forecasts late rather than alarm at its first
        burst (twelve calls in its first minute are not a rate of 720 an hour)."""
        self._forget(now)
        return self._total / HOUR

    def _forget(self, now: float) -> None:
        while self._minutes and self._minutes[0][0] <= now - HOUR:
            self._total -= self._minutes.popleft()[1]
        if not self._minutes:
            self._total = 0.0


def exhausts_in(kind: str, limit: float, per: float, remaining: float, reset: float, rate: float) -> float | None:
    """Seconds until the budget runs out at ``rate`` units a second; None when it does not:
    a bucket (it refills as it goes), a quota whose window resets first, a rolling window
    that never holds the limit at this rate, or nothing spent."""
    if kind == BUCKET or rate <= 0:
        return None
    seconds = max(0.0, remaining) / rate
    if kind == FIXED and seconds >= reset:
        return None
    if kind != FIXED and rate * per <= limit:
        return None
    return seconds
