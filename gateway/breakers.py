"""Each vendor's circuit breaker, kept in storage so that with Redis every process opens
and closes together; when storage fails, each process falls back to its own breaker."""

from __future__ import annotations

import logging
import time

from gateway.config.model import CircuitBreaker
from gateway.core.breaker import Admission, BreakerState, STATE_NAMES
from gateway.errors import StorageError
from gateway.metrics import Metrics
from gateway.storage import Storage

log = logging.getLogger("gateway.breakers")


class CircuitBreakers:
    def __init__(self, storage: Storage, metrics: Metrics) -> None:
        self._storage = storage
        self._metrics = metrics
        self._local: dict[str, BreakerState] = {}

    async def state(self, vendor: str, config: CircuitBreaker) -> str:
        try:
            state = await self._storage.breaker_state(vendor, config)
        except StorageError:
            state = self._local.setdefault(vendor, BreakerState()).state(time.time())
        return STATE_NAMES[state]

    async def admit(self, vendor: str, config: CircuitBreaker) -> Admission:
        try:
            admission = await self._storage.breaker_admit(vendor, config)
        except StorageError as exc:
            log.warning("%s: breaker state unavailable, deciding locally: %s", vendor, exc)
            admission = self._local.setdefault(vendor, BreakerState()).admit(config, time.time())
        self._metrics.circuit_state.labels(vendor).set(admission.state)
        return admission

    async def record(self, vendor: str, config: CircuitBreaker, failure: bool, probe: bool) -> None:
        try:
            state = await self._storage.breaker_record(vendor, config, failure, probe)
        except StorageError as exc:
            log.warning("%s: breaker state unavailable, counting locally: %s", vendor, exc)
            state = self._local.setdefault(vendor, BreakerState()).record(config, time.time(), failure, probe)
        self._metrics.circuit_state.labels(vendor).set(state)
