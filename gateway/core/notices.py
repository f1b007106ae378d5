"""What the notifications decide without I/O: a vendor's success rate over the last hour
from the process's own answers, and at most one message per event and vendor per span.
Pure: the clock is passed in."""

from __future__ import annotations

from collections import deque

HOUR = 3600.0
MINUTE = 60.0
SPAN = 600.0  # at most one message per event and vendor in this many seconds
LOW_SUCCESS = 0.95
MIN_ANSWERS = 20  # fewer answers in the hour say nothing about a rate


class AnswerCounts:
    """Per vendor, answers and those below 400, per minute over the last hour."""

    def __init__(self) -> None:
        self._minutes: dict[str, deque[list[float]]] = {}  # [minute start, answers, good]

    def answered(self, vendor: str, good: bool, now: float) -> None:
        minutes = self._minutes.get(vendor)
        if minutes is None:
            minutes = self._minutes[vendor] = deque()
        start = now - now % MINUTE
        if minutes and minutes[-1][0] == start:
            minutes[-1][1] += 1
            minutes[-1][2] += good
            return
        minutes.append([start, 1, float(good)])
        while minutes and minutes[0][0] <= now - HOUR:
            minutes.popleft()

    def success_rate(self, vendor: str, now: float) -> tuple[int, float]:
        """(answers, share below 400) over the last hour."""
        minutes = [m for m in self._minutes.get(vendor, ()) if m[0] > now - HOUR]
        answers = sum(m[1] for m in minutes)
        return int(answers), (sum(m[2] for m in minutes) / answers if answers else 1.0)

    def vendors(self) -> list[str]:
        return list(self._minutes)


class Throttle:
    """At most one message per (event, vendor) per ``span`` seconds."""

    def __init__(self, span: float = SPAN) -> None:
        self._span = span
        self._sent: dict[tuple[str, str], float] = {}

    def allows(self, event: str, vendor: str, now: float) -> bool:
        """Whether a message may go now; noted as sent when it may."""
        last = self._sent.get((event, vendor))
        if last is not None and now - last < self._span:
            return False
        if len(self._sent) > 10_000:  # bounded: old entries allow again anyway
            self._sent = {k: t for k, t in self._sent.items() if now - t < self._span}
        self._sent[(event, vendor)] = now
        return True


def success_verdict(answers: int, rate: float, was_low: bool) -> bool:
    """Whether the success rate counts as low now; a low one recovers only at 95% again."""
    if answers < MIN_ANSWERS:
        return was_low and rate < LOW_SUCCESS
    return rate < LOW_SUCCESS
