"""Per-vendor stats shared by every process: the answers of this process counted on the
request's path, added to storage in the background, and read back for ``/_gateway/status``.

On the request's path ``record`` only bumps counters of the pending (vendor, minute)
record, a dict lookup and a few list writes: no await, no I/O. About once a second the
pending minutes go to storage in one round trip (``StatsStore.add_stats``), and once more
when the gateway stops. A flush that fails keeps its minutes pending, to be added with the
next one (those older than what storage keeps are dropped). Reading flushes this
process's pending first, so a process reports its own answers at once and the others'
within about a second.
"""

from __future__ import annotations

import asyncio
import logging
import time
from bisect import bisect_right
from collections.abc import Callable, Sequence

from gateway.core.stats import (
    BOUNDS, FIRST_BUCKET, KEEP, MINUTE, OK, OUTCOMES, REQUESTS, WIDTH, merge, minute_of, report, to_fields, window_spans,
)
from gateway.errors import StorageError
from gateway.storage.kept import FLUSH_EVERY, Flusher
from gateway.storage.stores import StatsStore

log = logging.getLogger("gateway.stats")


class Stats(Flusher):
    def __init__(self, store: StatsStore, *, every: float = FLUSH_EVERY, clock: Callable[[], float] = time.time) -> None:
        super().__init__(every)
        self._store = store
        self._clock = clock
        self._pending: dict[tuple[str, int], list[int]] = {}
        # The current minute's pending records by vendor, so an answer finds its own with
        # one lookup by name; emptied whenever the pending ones are taken.
        self._current: dict[str, list[int]] = {}
        self._minute, self._opened, self._closes = 0, 0.0, 0.0
        self._successes: dict[str, float] = {}
        self._flushing = asyncio.Lock()

    def record(self, vendor: str, status: int, ours: bool, seconds: float, now: float) -> None:
        """Count one answer: its status (three digits), whether the gateway made it (a
        problem), how long it took, and when it went out."""
        if not self._opened <= now < self._closes:
            self._turn(now)
        counts = self._current.get(vendor)
        if counts is None:
            counts = self._open(vendor)
        counts[REQUESTS] += 1
        field = OUTCOMES[ours][status]
        counts[field] += 1
        counts[FIRST_BUCKET + bisect_right(BOUNDS, seconds)] += 1
        if field == OK:
            self._successes[vendor] = now

    def _turn(self, now: float) -> None:
        """Another minute than the current one: its records are found anew."""
        self._minute = minute_of(now)
        self._opened = self._minute * MINUTE
        self._closes = self._opened + MINUTE
        self._current = {}

    def _open(self, vendor: str) -> list[int]:
        counts = self._current[vendor] = self._pending.setdefault((vendor, self._minute), [0] * WIDTH)
        return counts

    async def flush(self) -> None:
        """Add the pending minutes to storage; on failure they stay pending."""
        async with self._flushing:
            if not self._pending and not self._successes:
                return
            pending, self._pending, self._current = self._pending, {}, {}
            successes, self._successes = self._successes, {}
            try:
                await self._store.add_stats({key: to_fields(counts) for key, counts in pending.items()}, successes)
            except StorageError as exc:
                self._keep(pending, successes)
                if not self._failing:
                    self._failing = True
                    log.warning("stats not added to storage (%s); kept here and tried again every %gs", exc, self._every)
                return
        if self._failing:
            self._failing = False
            log.warning("stats added to storage again")

    def _keep(self, pending: dict[tuple[str, int], list[int]], successes: dict[str, float]) -> None:
        """Put back what a failed flush took, beside what was recorded meanwhile."""
        oldest = minute_of(self._clock() - KEEP)
        for key, counts in pending.items():
            if key[1] < oldest:
                continue
            kept = self._pending.get(key)
            if kept is None:
                self._pending[key] = counts
            else:
                merge(kept, counts)
        for vendor, at in successes.items():
            self._successes[vendor] = max(at, self._successes.get(vendor, at))

    async def read(self, vendors: Sequence[str]) -> dict[str, dict[str, object]]:
        """Each vendor's ``stats`` (gateway.core.stats.report), from storage, with this
        process's pending answers added first. Raises StorageError when storage fails."""
        await self.flush()
        read = await self._store.read_stats(vendors, window_spans(self._clock()))
        return {vendor: report(*read[vendor]) for vendor in vendors}

    async def close(self) -> None:
        """The last flush, once the gateway no longer answers."""
        await self.stop()
        if self._failing:
            lost = sum(counts[REQUESTS] for counts in self._pending.values())
            log.warning("stats not added to storage before stopping: %d answer%s of this process are not counted",
                      lost, "" if lost == 1 else "s")
