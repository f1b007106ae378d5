"""What to do after an upstream attempt: retry it (after how long) or give the answer.

Pure: the random jitter fraction is passed in, like the clock elsewhere in the core.
"""

from __future__ import annotations

from typing import NamedTuple

from gateway.config.model import Backoff, Retry

# POST and PATCH are not idempotent: once they reached the vendor they may have acted.
NON_IDEMPOTENT = frozenset({"POST", "PATCH"})


class Outcome(NamedTuple):
    """How one attempt ended: an HTTP status, or a failure (``timeout`` / ``connect``).
    A named tuple: one is made per attempt, a frozen dataclass costs twice as much."""

    status: int | None = None
    failure: str | None = None
    sent: bool = True  # False when the request never reached the vendor
    retry_after: float | None = None

    @property
    def label(self) -> str:
        return str(self.status) if self.status is not None else str(self.failure)


def should_retry(
    retry: Retry,
    attempt: int,
    outcome: Outcome,
    *,
    method: str,
    idempotency_key: bool,
    replayable: bool,
) -> bool:
    """Whether attempt number ``attempt`` (1-based) is followed by another."""
    if attempt >= retry.attempts or not replayable:
        return False
    if not outcome.sent:
        return True
    if outcome.retry_after is not None and outcome.retry_after > retry.backoff.max:
        # The vendor asks for a longer pause than we would hold the caller: answer now.
        return False
    key: int | str | None = outcome.status if outcome.status is not None else outcome.failure
    if key not in retry.on:
        return False
    return method not in NON_IDEMPOTENT or idempotency_key


def backoff_delay(backoff: Backoff, attempt: int, jitter_fraction: float, retry_after: float | None = None) -> float:
    """Seconds to wait after attempt ``attempt`` failed; ``jitter_fraction`` is in [0, 1).

    A vendor's ``Retry-After`` is a floor: retrying earlier would only meet the same wall.
    """
    delay = min(backoff.max, backoff.initial * backoff.multiplier ** (attempt - 1))
    delay += backoff.jitter * jitter_fraction
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay
