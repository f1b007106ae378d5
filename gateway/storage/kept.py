"""What the embedded mode keeps across restarts: in-process state (budgets, breakers, and
whatever else registers a section) copied to the local store in the background.

Requests never wait for the disk: a change only marks its entry as changed (a dict
write). About once a second the changed entries are written in one transaction, and
once more when the storage closes (a clean shutdown). After ``kill -9`` at most the
changes of the last second are lost; at start every kept entry is read back, and one
that cannot be read (corrupt, or written by another version) is logged and skipped.

A kind of state is kept by a ``Section``: its name, how to write one entry (a JSON
record, and until when it matters: past that it is dropped), and how to read one back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

import orjson

from gateway.errors import StorageError
from gateway.storage.durable import LocalStore, StateRow

log = logging.getLogger("gateway.storage")

FLUSH_EVERY = 1.0

T = TypeVar("T")


class Section(Generic[T]):
    """One kind of kept state. ``export(key, context)`` gives an entry's record and until
    when it matters; ``context`` is what the changing call knew (a budget's charge, a
    breaker's config). ``restore(key, record)`` puts an entry back, or raises ValueError."""

    def __init__(
        self,
        name: str,
        export: Callable[[str, T], tuple[object, float]],
        restore: Callable[[str, object], None],
    ) -> None:
        self.name = name
        self.export = export
        self.restore = restore
        self.changed: dict[str, T] = {}


class Flusher:
    """What writes in the background: ``flush`` every ``every`` seconds from ``wake`` on,
    and once more at ``stop``."""

    def __init__(self, every: float) -> None:
        self._every = every
        self._task: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()
        self._failing = False  # the latest flush failed (said once, until one succeeds)

    def wake(self) -> None:
        """Start the flushes (again a no-op once started, or once stopping)."""
        if self._task is None and not self._closing.is_set():
            self._task = asyncio.get_running_loop().create_task(self._flush_every())

    async def _flush_every(self) -> None:
        while not self._closing.is_set():
            try:
                await asyncio.wait_for(self._closing.wait(), self._every)
            except TimeoutError:
                pass
            await self.flush()

    async def flush(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        """The last flush: the background ones end first."""
        self._closing.set()
        if self._task is not None:
            await self._task
        await self.flush()


class StateKeeper(Flusher):
    def __init__(
        self,
        store: LocalStore,
        sections: Sequence[Section[Any]],
        *,
        every: float = FLUSH_EVERY,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(every)
        self._store = store
        self._sections = {section.name: section for section in sections}
        self._clock = clock

    def load(self) -> None:
        """Put every kept entry back into its section (at start, before serving)."""
        try:
            rows = self._store.read_state()
        except StorageError as exc:
            log.error("kept state not read, starting afresh: %s", exc)
            return
        now, restored = self._clock(), 0
        for row in rows:
            try:
                name, key, value, until = row
                section = self._sections.get(name)
                if section is None:
                    raise ValueError(f"no such kind of state {name!r}")
                if not isinstance(key, str) or not isinstance(value, bytes) or not isinstance(until, int | float):
                    raise ValueError("not a row of kept state (key, value or until of another type)")
                if until <= now:
                    continue
                section.restore(key, orjson.loads(value))
            except (ValueError, TypeError) as exc:  # orjson.JSONDecodeError is a ValueError
                log.warning("kept state %r ignored: %s", tuple(str(part)[:80] for part in row[:2]), exc)
                continue
            restored += 1
        if restored:
            log.info("kept state read back: %d entr%s", restored, "y" if restored == 1 else "ies")

    def changed(self, section: Section[T], key: str, context: T) -> None:
        """Mark an entry as changed; it is written with the next flush (a caller that marks
        ``section.changed`` itself, on a hot path, calls ``wake`` after)."""
        section.changed[key] = context
        if self._task is None:
            self.wake()

    async def flush(self) -> None:
        """Write what changed since the last flush; on failure it is kept for the next one."""
        now = self._clock()
        taken: list[tuple[Section[Any], dict[str, Any]]] = []
        rows: list[StateRow] = []
        for section in self._sections.values():
            if not section.changed:
                continue
            changed, section.changed = section.changed, {}
            taken.append((section, changed))
            for key, context in changed.items():
                record, until = section.export(key, context)
                # Written even when it no longer matters: the write drops it, and with it
                # the copy kept while it did (a refund may have emptied a budget).
                rows.append((section.name, key, orjson.dumps(record), until))
        if not taken:
            return
        try:
            await self._store.write_state(rows, now)
        except StorageError as exc:
            for section, changed in taken:
                for key, context in changed.items():
                    section.changed.setdefault(key, context)  # a newer change is already there
            if not self._failing:
                self._failing = True
                log.error("kept state not saved (%s); trying again every %gs", exc, self._every)
            return
        if self._failing:
            self._failing = False
            log.warning("kept state saved again")

    async def close(self) -> None:
        """The last flush: after it nothing is lost."""
        await self.stop()
        if self._failing:
            lost = sum(len(section.changed) for section in self._sections.values())
            log.error("kept state not saved before stopping: the last changes of %d entr%s are lost",
                      lost, "y" if lost == 1 else "ies")
