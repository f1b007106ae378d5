"""Whether shared storage answers: one view per process, kept by the storage backend and
read by everything that has a way to do without it (budgets fall back to
``on_storage_error``, breakers decide in the process).

    answering ──a call fails──> failing: calls that have a fallback take it at once
    failing ──RETRY seconds──> one such call is let through as the probe
    probe answers (or any call that always goes, like /readyz's ping) ──> answering

So a storage that hangs costs a request one timeout at most, and the whole process one
timeout per RETRY seconds; the fallback starts and ends once per outage, logged once each.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable
from types import TracebackType

from gateway.errors import StorageError

log = logging.getLogger("gateway.storage")

# After a failure, calls with a fallback take it for this long before one of them tries
# storage again: a dead Redis costs one timeout a second, not one per request.
RETRY = 1.0


class StorageHealth:
    def __init__(self, name: str, *, retry: float = RETRY, clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.down_since: float | None = None
        self._retry = retry
        self._retry_at = 0.0
        self._probing = False
        self._clock = clock
        self._listeners: list[weakref.WeakMethod[Callable[[bool], None]]] = []
        self._attempt = _Attempt(self)

    def watch(self, listener: Callable[[bool], None]) -> None:
        """Call the method ``listener(answering)`` when an outage starts (False) and when it
        ends (True). Held weakly: an object replaced (a reload's) stops listening with it."""
        self._listeners.append(weakref.WeakMethod(listener))

    @property
    def failing(self) -> bool:
        return self.down_since is not None

    def attempt(self) -> _Attempt:
        """Around one call that has a fallback: raises StorageError at once (no round trip)
        while storage fails and it is not the probe's turn; notes how the call went."""
        return self._attempt

    def begin(self) -> None:
        """An attempt starts (see ``attempt``)."""
        if self.down_since is not None:
            if self._probing or self._clock() < self._retry_at:
                raise StorageError(f"{self.name} is failing; not asked again until its probe answers")
            self._probing = True

    def end(self, exc: BaseException | None) -> None:
        """An attempt ended: answered (no ``exc``), failed (a StorageError), or neither."""
        self._probing = False
        if exc is None:
            if self.down_since is not None:
                self.answered()
        elif isinstance(exc, StorageError):
            self.failed(exc)

    def failed(self, exc: StorageError) -> None:
        now = self._clock()
        self._retry_at = now + self._retry
        if self.down_since is None:
            self.down_since = now
            log.warning(
                "shared storage failed (%s): budgets follow on_storage_error and breakers decide in this"
                " process until it answers (asked again every %gs)", exc, self._retry,
            )
            self._tell(False)

    def answered(self) -> None:
        if self.down_since is not None:
            log.info("shared storage answers again after %.1fs", self._clock() - self.down_since)
            self.down_since = None
            self._tell(True)

    def _tell(self, answering: bool) -> None:
        self._listeners = [ref for ref in self._listeners if ref() is not None]
        for ref in self._listeners:
            listener = ref()
            if listener is not None:
                listener(answering)


class _Attempt:
    """``StorageHealth.attempt``'s context manager, one per health: a call with a fallback is
    on every request's way, and a generator-based one costs more than the call's own work."""

    __slots__ = ("_health",)

    def __init__(self, health: StorageHealth) -> None:
        self._health = health

    def __enter__(self) -> None:
        self._health.begin()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._health.end(exc)
