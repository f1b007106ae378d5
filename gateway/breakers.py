"""Each vendor's circuit breaker, kept in storage so that with Redis every process opens
and closes together.

While storage fails (its ``health`` decides, for budgets and breakers alike) each process
decides with a breaker of its own, at once and without a word per request: it starts from
what storage last showed (a breaker open there stays open here until the same time), and
is dropped once storage answers again, so that the next outage starts afresh from it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from gateway.config.model import CircuitBreaker
from gateway.core.breaker import HALF_OPEN, OPEN, STATE_NAMES, Admission, BreakerState
from gateway.errors import StorageError
from gateway.metrics import Metrics
from gateway.storage import BreakerStore


class CircuitBreakers:
    def __init__(self, storage: BreakerStore, metrics: Metrics) -> None:
        self._storage = storage
        self._metrics = metrics
        self._local: dict[str, BreakerState] = {}
        self._opened_until: dict[str, float] = {}  # per vendor: open in storage until then, as last seen
        self._states: dict[str, int] = {}  # per vendor, as this process last saw it
        self._listeners: list[Callable[[str, int], None]] = []
        storage.health.watch(self._storage_changed)

    def watch(self, listener: Callable[[str, int], None]) -> None:
        """Call ``listener(vendor, state)`` when the state this process sees changes."""
        self._listeners.append(listener)

    def _saw(self, vendor: str, state: int) -> None:
        self._metrics.circuit_state.labels(vendor).set(state)
        if self._states.get(vendor, state) != state:
            for listener in self._listeners:
                listener(vendor, state)
        self._states[vendor] = state

    async def state(self, vendor: str, config: CircuitBreaker) -> str:
        try:
            state = await self._storage.breaker_state(vendor, config)
        except StorageError:
            state = self._fallback(vendor).state(time.time())
        return STATE_NAMES[state]

    async def admit(self, vendor: str, config: CircuitBreaker) -> Admission:
        try:
            admission = await self._storage.breaker_admit(vendor, config)
        except StorageError:
            admission = self._fallback(vendor).admit(config, time.time())
        else:
            self._seen(vendor, admission.state, admission.retry_after)
        self._saw(vendor, admission.state)
        return admission

    async def record(self, vendor: str, config: CircuitBreaker, failure: bool, probe: bool) -> None:
        try:
            state = await self._storage.breaker_record(vendor, config, failure, probe)
        except StorageError:
            state = self._fallback(vendor).record(config, time.time(), failure, probe)
        else:
            if state != OPEN or vendor not in self._opened_until:
                self._seen(vendor, state, config.open_for)
        self._saw(vendor, state)

    def _seen(self, vendor: str, state: int, open_for: float) -> None:
        if state == OPEN:
            self._opened_until[vendor] = time.time() + open_for
        elif state == HALF_OPEN:
            self._opened_until[vendor] = time.time()  # past: one probe may go
        else:
            self._opened_until.pop(vendor, None)

    def _fallback(self, vendor: str) -> BreakerState:
        local = self._local.get(vendor)
        if local is None:
            local = self._local[vendor] = BreakerState(opened_until=self._opened_until.get(vendor, 0.0))
        return local

    def _storage_changed(self, answering: bool) -> None:
        if answering:
            self._local.clear()
