"""Cached lookups for the pipeline: which requests a rule covers, reading and storing
answers, and coalescing identical misses (within the process, and with Redis across
processes through a short fetch lock, the others reading the answer it stores).

Storage failures never fail a request: a read that fails is a miss, a write that fails
is skipped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from multidict import CIMultiDict

from gateway.config.model import CacheRule, Policy
from gateway.core.cache import Entry, cache_key, skips_read
from gateway.errors import StorageError
from gateway.metrics import Metrics
from gateway.storage import Storage

log = logging.getLogger("gateway.cache")

# How often a process waiting for another's fetch looks for the stored answer.
WAIT_STEP = 0.05


@dataclass(frozen=True)
class Lookup:
    """One cacheable request."""

    vendor: str
    rule: CacheRule
    key: str
    bypass: bool  # the caller asked for a fresh answer: read nothing, store the new one
    headers: CIMultiDict[str]  # the caller's, for Vary


@dataclass
class Flight:
    """One in-process fetch of an answer, which identical requests wait for."""

    leading: bool
    answer: asyncio.Future[Entry | None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())

    def share(self, entry: Entry | None) -> None:
        if not self.answer.done():
            self.answer.set_result(entry)


class ResponseCache:
    def __init__(self, storage: Storage, metrics: Metrics, *, clock: Callable[[], float] = time.time) -> None:
        self._storage = storage
        self._metrics = metrics
        self._flights: dict[str, Flight] = {}
        self.clock = clock

    def lookup(
        self, policy: Policy, method: str, path: str, query: str | None, headers: CIMultiDict[str], body: bytes | None
    ) -> Lookup | None:
        """The lookup for a request a cache rule covers, else None."""
        rule = next((r for r in policy.cache if r.applies(method, path)), None)
        if rule is None:
            return None
        key = cache_key(policy.vendor, method, path, query, headers, body)
        bypass = skips_read(headers.getall("Cache-Control", []), headers.getall("Pragma", []))
        return Lookup(policy.vendor, rule, key, bypass, headers)

    def count(self, vendor: str, result: str) -> None:
        self._metrics.cache_requests.labels(vendor, result).inc()

    async def read(self, lookup: Lookup) -> Entry | None:
        """The stored answer for this request (fresh or not), if any matches it."""
        try:
            blob = await self._storage.cache_get(lookup.key)
        except StorageError as exc:
            log.warning("%s: cache read failed, treated as a miss: %s", lookup.vendor, exc)
            return None
        entry = Entry.from_bytes(blob) if blob is not None else None
        return entry if entry is not None and entry.matches(lookup.headers) else None

    async def store(self, lookup: Lookup, entry: Entry) -> None:
        try:
            await self._storage.cache_put(lookup.key, entry.to_bytes(), entry.keep_for)
        except StorageError as exc:
            log.warning("%s: cache write failed, answer not kept: %s", lookup.vendor, exc)

    @asynccontextmanager
    async def flight(self, lookup: Lookup) -> AsyncIterator[Flight]:
        """Lead the fetch of this answer, or follow the one in progress in this process."""
        current = self._flights.get(lookup.key)
        if current is not None:
            yield Flight(leading=False, answer=current.answer)
            return
        flight = self._flights[lookup.key] = Flight(leading=True)
        try:
            yield flight
        finally:
            flight.share(None)  # followers of a fetch that shared nothing fetch for themselves
            del self._flights[lookup.key]

    @asynccontextmanager
    async def across_processes(self, lookup: Lookup, seconds: float) -> AsyncIterator[Entry | None]:
        """Hold the storage's fetch lock for this answer; while another process holds it,
        wait (up to ``seconds``) for the answer it stores. Yields that answer, or None when
        this process must fetch."""
        deadline = self.clock() + seconds
        locked = False
        found: Entry | None = None
        while True:
            try:
                locked = await self._storage.cache_lock(lookup.key, seconds)
            except StorageError:
                break
            # Read after taking the lock too: the fetch that held it may have just stored.
            entry = await self.read(lookup)
            if entry is not None and entry.fresh(self.clock()):
                found = entry
                break
            if locked:
                break
            if self.clock() >= deadline:
                break
            await asyncio.sleep(WAIT_STEP)
        try:
            yield found
        finally:
            if locked:
                try:
                    await self._storage.cache_unlock(lookup.key)
                except StorageError:
                    pass  # the lock expires by itself
