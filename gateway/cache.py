"""Cached lookups for the pipeline: which requests a rule covers, reading and storing
answers, coalescing identical misses (within the process, and with Redis across
processes through a short fetch lock, the others reading the answer it stores), and
dropping what a successful write changed.

A read fetches the answer and the current generations of its rule and path together;
the answer is stored with those generations, so a write that succeeds while its fetch
is under way leaves it outdated at once (see gateway.core.cache). What a request gets is
never older than a write that succeeded before it asked: a write's generations are
bumped before its caller gets the answer; a hit needs an answer whose lookup read them
after that; and a request joins an in-process fetch only when that fetch's lookup read
generations at least as new as its own (across processes, the answer the fetch stores
is read and checked like any other).

Storage failures never fail a request: a read that fails is a miss (and its answer is
not stored: it could not be placed after the writes before it), a write that fails is
skipped, an invalidation that fails is logged.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace

import orjson
from multidict import CIMultiDict

from gateway.config.model import CacheRule, Policy
from gateway.core.cache import (
    PARTIAL_OR_CONDITIONAL,
    Entry,
    Generations,
    Shared,
    cache_key,
    generation_names,
    invalidations,
    skips_read,
)
from gateway.errors import GatewayError, StorageError
from gateway.metrics import Metrics
from gateway.storage import CacheStore

log = logging.getLogger("gateway.cache")

# How often a process waiting for another's fetch looks for the stored answer.
WAIT_STEP = 0.05


@dataclass
class Lookup:
    """One cacheable request."""

    vendor: str
    rule: CacheRule
    key: str
    bypass: bool  # the caller asked for a fresh answer: read nothing, store the new one
    headers: CIMultiDict[str]  # the caller's, for Vary
    generations: tuple[str, str]  # the names of its rule's and its path's
    seen: Generations | None = None  # as the latest read found them; None: not read
    read_at: float = 0.0  # when that read began (wall clock)


# What a fetch gives those waiting for it in this process.
FetchShared = Shared[GatewayError]


@dataclass
class Flight:
    """One in-process fetch of an answer, which identical requests wait for."""

    leading: bool
    seen: Generations | None = None  # the leader's lookup's, when it began
    answer: asyncio.Future[FetchShared] = field(default_factory=lambda: asyncio.get_running_loop().create_future())

    def serves(self, seen: Generations | None) -> bool:
        """Whether a request whose lookup read ``seen`` may take this fetch's answer."""
        return seen is None or (self.seen is not None and self.seen.covers(seen))

    def share(self, shared: FetchShared) -> None:
        if not self.answer.done():
            self.answer.set_result(shared)


@dataclass
class FetchLock:
    """This process's hold on fetching one answer among all processes sharing storage."""

    entry: Entry | None = None  # another process's answer, found while waiting for it
    _release: Callable[[], Awaitable[None]] | None = None

    async def release(self) -> None:
        """Let the others go (at once when the answer will not be stored)."""
        release, self._release = self._release, None
        if release is not None:
            await release()


class ResponseCache:
    def __init__(self, storage: CacheStore, metrics: Metrics) -> None:
        self._storage = storage
        self._metrics = metrics
        self._flights: dict[str, Flight] = {}

    def lookup(
        self, policy: Policy, method: str, path: str, query: str | None, headers: CIMultiDict[str], body: bytes | None
    ) -> Lookup | None:
        """The lookup for a request a cache rule covers, else None."""
        rule = next((r for r in policy.cache if r.applies(method, path)), None)
        if rule is None or any(name in headers for name in PARTIAL_OR_CONDITIONAL):
            return None
        key = cache_key(policy.vendor, method, path, query, headers, body)
        bypass = skips_read(headers.getall("Cache-Control", []), headers.getall("Pragma", []))
        return Lookup(policy.vendor, rule, key, bypass, headers, generation_names(rule, path))

    def count(self, vendor: str, result: str) -> None:
        self._metrics.cache_requests.labels(vendor, result).inc()

    async def read(self, lookup: Lookup) -> Entry | None:
        """The stored answer for this request (fresh or not), if one matches it and no write
        has outdated it; None on a bypass, which reads only the generations."""
        read_at = time.time()
        try:
            blob, current = await self._storage.cache_get(lookup.key, lookup.vendor, lookup.generations)
        except StorageError as exc:
            log.warning("%s: cache read failed, treated as a miss: %s", lookup.vendor, exc)
            lookup.seen = None
            return None
        lookup.seen, lookup.read_at = Generations(*current), read_at
        entry = Entry.from_bytes(blob) if blob is not None and not lookup.bypass else None
        if entry is None or not entry.generations.covers(lookup.seen):
            return None
        return entry if entry.matches(lookup.headers) else None

    async def store(self, lookup: Lookup, entry: Entry) -> None:
        """Keep an answer under the generations its lookup read, for ``ttl + stale_if_error``
        from that read (so it never outlives the generations that would outdate it)."""
        seconds = entry.keep_for - (time.time() - lookup.read_at)
        if lookup.seen is None or seconds <= 0:
            return
        try:
            blob = replace(entry, generations=lookup.seen).to_bytes()
        except (TypeError, orjson.JSONEncodeError):  # a header that is not text (raw bytes)
            log.info("%s: an answer with undecodable headers is not cached", lookup.vendor)
            return
        try:
            await self._storage.cache_put(lookup.key, blob, seconds)
        except StorageError as exc:
            log.warning("%s: cache write failed, answer not kept: %s", lookup.vendor, exc)

    async def written(self, policy: Policy, method: str, path: str, status: int, request_id: str) -> None:
        """A request got the vendor's final answer: if it was a successful write, drop the
        stored answers it changed, before its caller hears of it."""
        bumps = invalidations(policy.cache, method, path, status)
        if not bumps:
            return
        try:
            await self._storage.cache_invalidate(policy.vendor, bumps)
        except StorageError as exc:
            log.warning(
                "%s: a successful %s could not drop the stored answers it changed (they are served "
                "until their ttl): %s", policy.vendor, method, exc, extra={"request_id": request_id},
            )

    @asynccontextmanager
    async def flight(self, lookup: Lookup) -> AsyncIterator[Flight]:
        """Lead the fetch of this answer, or follow the one in progress in this process."""
        current = self._flights.get(lookup.key)
        if current is not None and current.serves(lookup.seen):
            yield Flight(leading=False, answer=current.answer)
            return
        # A fetch that began before a write this request came after is no answer for it:
        # it leads its own, which later requests join instead.
        flight = self._flights[lookup.key] = Flight(leading=True, seen=lookup.seen)
        try:
            yield flight
        finally:
            flight.share(Shared())  # followers of a fetch that shared nothing fetch for themselves
            if self._flights.get(lookup.key) is flight:
                del self._flights[lookup.key]

    @asynccontextmanager
    async def fetch_lock(self, lookup: Lookup, seconds: float) -> AsyncIterator[FetchLock]:
        """Take the storage's fetch lock for this answer for up to ``seconds``; while another
        process holds it, wait for the answer it stores (``FetchLock.entry``), or until the
        lock is free or ``seconds`` have passed (then fetch without it)."""
        lock = FetchLock()
        deadline = time.time() + seconds
        try:
            while True:
                try:
                    token = await self._storage.cache_lock(lookup.key, seconds)
                except StorageError:
                    break
                if token is not None:
                    lock._release = functools.partial(self._unlock, lookup, token)
                # Read after taking the lock too: the fetch that held it may have just stored.
                entry = await self.read(lookup)
                if entry is not None and entry.fresh(time.time()):
                    lock.entry = entry
                    break
                if token is not None or time.time() >= deadline:
                    break
                await asyncio.sleep(WAIT_STEP)
            yield lock
        finally:
            await lock.release()

    async def _unlock(self, lookup: Lookup, token: str) -> None:
        try:
            await self._storage.cache_unlock(lookup.key, token)
        except StorageError:
            pass  # the lock expires by itself
