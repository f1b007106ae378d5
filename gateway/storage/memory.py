"""In-process storage: the embedded default for a single gateway process.

Token records are also written to the local store under ``data_dir``, so a restart
resumes with the last rotated refresh token instead of the configured (dead) one.
"""

from __future__ import annotations

import itertools
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

from gateway.config.model import CircuitBreaker
from gateway.core.breaker import Admission, BreakerState
from gateway.core.budget import Adjustment, BudgetBook, Charge, Verdict
from gateway.deadletters import DeadLetter
from gateway.storage.durable import LocalStore
from gateway.storage.health import StorageHealth


class LocalBudgets:
    """Budgets kept in this process: memory storage's, and the fallback when shared storage fails."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._book = BudgetBook()
        self._clock = clock

    async def charge_budgets(self, vendor: str, charges: Sequence[Charge], max_wait: float) -> Verdict:
        return self._book.charge(vendor, charges, self._clock(), max_wait)

    async def refund_budgets(self, vendor: str, charges: Sequence[Charge], at: float) -> None:
        self._book.refund(vendor, charges, self._clock(), at)

    async def adjust_budgets(self, vendor: str, charges: Sequence[Charge], said: Sequence[Adjustment]) -> Verdict:
        return self._book.adjust(vendor, charges, self._clock(), said)

    async def peek_budgets(self, vendor: str, charges: Sequence[Charge]) -> Verdict:
        return self._book.peek(vendor, charges, self._clock())


class MemoryCache:
    """Stored answers in this process: least recently used first out, beyond ``max_bytes``."""

    def __init__(self, max_bytes: int, clock: Callable[[], float] = time.time) -> None:
        self._entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self._max = max_bytes
        self._size = 0
        self._clock = clock

    async def cache_get(self, key: str) -> bytes | None:
        found = self._entries.get(key)
        if found is None:
            return None
        if found[1] <= self._clock():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return found[0]

    async def cache_put(self, key: str, blob: bytes, seconds: float) -> None:
        if len(blob) > self._max:
            return
        self._drop(key)
        self._entries[key] = (blob, self._clock() + seconds)
        self._size += len(blob)
        while self._size > self._max:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: str) -> None:
        found = self._entries.pop(key, None)
        if found is not None:
            self._size -= len(found[0])

    async def cache_lock(self, key: str, seconds: float) -> str | None:
        return "local"  # one process: its own coalescing is all there is

    async def cache_unlock(self, key: str, token: str) -> None:
        return None


class MemoryStorage(LocalBudgets, MemoryCache):
    name = "memory"

    def __init__(self, data_dir: Path, cache_max: int = 256 * 1024**2) -> None:
        LocalBudgets.__init__(self)
        MemoryCache.__init__(self, cache_max)
        self.health = StorageHealth("memory")
        self._data_dir = data_dir
        self._local: LocalStore | None = None
        self._tokens: dict[str, bytes] = {}
        self._locks: dict[str, tuple[int, float]] = {}
        self._fences = itertools.count(1)
        self._breakers: dict[str, BreakerState] = {}

    def _store(self) -> LocalStore:
        if self._local is None:  # made on first use: a gateway without tokens writes nothing
            self._local = LocalStore(self._data_dir)
        return self._local

    async def ping(self) -> None:
        return None

    async def lock_refresh(self, vendor: str, ttl: float) -> int | None:
        now = time.monotonic()
        held = self._locks.get(vendor)
        if held is not None and held[1] > now:
            return None
        fence = next(self._fences)
        self._locks[vendor] = (fence, now + ttl)
        return fence

    async def unlock_refresh(self, vendor: str, fence: int) -> None:
        if self._locks.get(vendor, (None, 0.0))[0] == fence:
            del self._locks[vendor]

    async def get_token(self, vendor: str) -> bytes | None:
        if vendor not in self._tokens:
            stored = await self._store().get(f"token:{vendor}")
            if stored is None:
                return None
            self._tokens[vendor] = stored
        return self._tokens[vendor]

    async def put_token(self, vendor: str, value: bytes, previous: bytes | None) -> bool:
        if await self.get_token(vendor) != previous:
            return False
        self._tokens[vendor] = value
        await self._store().put(f"token:{vendor}", value)
        return True

    async def breaker_state(self, vendor: str, config: CircuitBreaker) -> int:
        return self._breakers.setdefault(vendor, BreakerState()).state(time.time())

    async def breaker_admit(self, vendor: str, config: CircuitBreaker) -> Admission:
        return self._breakers.setdefault(vendor, BreakerState()).admit(config, time.time())

    async def breaker_record(self, vendor: str, config: CircuitBreaker, failure: bool, probe: bool) -> int:
        return self._breakers.setdefault(vendor, BreakerState()).record(config, time.time(), failure, probe)

    async def put_dead_letter(self, entry: DeadLetter) -> None:
        await self._store().put_entry(entry.id, entry.vendor, entry.to_json())

    async def update_dead_letter(self, entry: DeadLetter) -> bool:
        return await self._store().update_entry(entry.id, entry.to_json())

    async def claim_dead_letter(self, entry_id: str, seconds: float) -> bool:
        now = time.time()
        return await self._store().claim_entry(entry_id, now, now + seconds)

    async def release_dead_letter(self, entry_id: str) -> None:
        await self._store().release_entry(entry_id)

    async def get_dead_letter(self, entry_id: str) -> DeadLetter | None:
        raw = await self._store().get_entry(entry_id)
        return DeadLetter.from_json(raw) if raw is not None else None

    async def delete_dead_letter(self, entry_id: str) -> bool:
        return await self._store().delete_entry(entry_id)

    async def list_dead_letters(self, vendor: str | None, after: str, limit: int) -> list[DeadLetter]:
        return [DeadLetter.from_json(raw) for raw in await self._store().list_entries(vendor, after, limit)]

    async def count_dead_letters(self, vendor: str) -> int:
        return await self._store().count_entries(vendor)

    async def close(self) -> None:
        if self._local is not None:
            self._local.close()
