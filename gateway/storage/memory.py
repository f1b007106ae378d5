"""In-process storage: the embedded default for a single gateway process.

What must outlive the process is kept in the local store under ``data_dir``: token
records as they change (a restart resumes with the last rotated refresh token instead
of the configured, dead, one), dead letters as they are kept, and budgets (their
pauses too), breakers and auth stops about once a second (``kept.py``), and the
per-vendor stats as gateway.stats flushes them (about once a second too).
"""

from __future__ import annotations

import itertools
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from gateway.config.model import CircuitBreaker
from gateway.config.vendor_signals import AuthFailures
from gateway.core.auth_stop import Admission as AuthAdmission, AuthStopState, Standing
from gateway.core.breaker import Admission, BreakerState
from gateway.core.budget import Adjustment, BudgetBook, BudgetState, Charge, Verdict, lasts_until
from gateway.core.cache import next_generation
from gateway.core.dead_letter import DeadLetter
from gateway.core.stats import KEEP, minute_of
from gateway.storage.durable import LocalStore
from gateway.storage.health import StorageHealth
from gateway.storage.kept import Section, StateKeeper
from gateway.storage.stores import StatsRead


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
    """Stored answers in this process: least recently used first out, beyond ``max_bytes``;
    and the generations that writes bump, each forgotten when its time is up."""

    def __init__(self, max_bytes: int, clock: Callable[[], float] = time.time) -> None:
        self._entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self._max = max_bytes
        self._size = 0
        self._clock = clock
        self._generations: dict[tuple[str, str], tuple[int, float]] = {}  # -> (generation, kept until)
        self._last_generation = 0
        self._sweep_at = 1024

    async def cache_get(self, key: str, vendor: str, generations: Sequence[str]) -> tuple[bytes | None, list[int]]:
        now = self._clock()
        current = [self._generation(vendor, name, now) for name in generations]
        found = self._entries.get(key)
        if found is None:
            return None, current
        if found[1] <= now:
            self._drop(key)
            return None, current
        self._entries.move_to_end(key)
        return found[0], current

    def _generation(self, vendor: str, name: str, now: float) -> int:
        found = self._generations.get((vendor, name))
        return found[0] if found is not None and found[1] > now else 0

    async def cache_invalidate(self, vendor: str, bumps: Mapping[str, float]) -> None:
        now = self._clock()
        for name, seconds in bumps.items():
            _, until = self._generations.get((vendor, name), (0, 0.0))
            # Above every generation given out, not only this one's: a forgotten generation
            # bumped again must come out above what older answers recorded.
            self._last_generation = next_generation(self._last_generation, now)
            self._generations[(vendor, name)] = (self._last_generation, max(until, now + seconds))
        if len(self._generations) >= self._sweep_at:
            # Generations live only while answers they could outdate do: as many as writes
            # in that time. A sweep when their number doubles keeps the cost per write flat.
            self._generations = {k: v for k, v in self._generations.items() if v[1] > now}
            self._sweep_at = max(1024, 2 * len(self._generations))

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
    """Raises StorageError when the local store under ``data_dir`` cannot be opened.
    ``clock`` is the time it counts with (the parity tables run a scenario's own)."""

    name = "memory"

    def __init__(
        self, data_dir: Path, cache_max: int = 256 * 1024**2, clock: Callable[[], float] = time.time
    ) -> None:
        LocalBudgets.__init__(self, clock)
        MemoryCache.__init__(self, cache_max, clock)
        self.health = StorageHealth("memory")
        self._local = LocalStore(data_dir)
        self._tokens: dict[str, bytes] = {}
        self._locks: dict[str, tuple[int, float]] = {}
        self._fences = itertools.count(1)
        self._breakers: dict[str, BreakerState] = {}
        self._notices: dict[str, float] = {}  # name -> claimed until
        self._kept_budgets: Section[Charge] = Section("budget", self._export_budget, self._restore_budget)
        self._kept_breakers: Section[CircuitBreaker] = Section("breaker", self._export_breaker, self._restore_breaker)
        self._auth_stops: dict[str, AuthStopState] = {}
        self._kept_auth_stops: Section[None] = Section("auth_stop", self._export_auth_stop, self._restore_auth_stop)
        self._keeper = StateKeeper(
            self._local, [self._kept_budgets, self._kept_breakers, self._kept_auth_stops], clock=clock
        )
        self._keeper.load()

    def _export_budget(self, key: str, charge: Charge) -> tuple[object, float]:
        state = self._book.state(key) or BudgetState()
        return state.to_record(), lasts_until(charge, state)

    def _restore_budget(self, key: str, record: object) -> None:
        self._book.put(key, BudgetState.from_record(record))

    def _export_breaker(self, vendor: str, config: CircuitBreaker) -> tuple[object, float]:
        state = self._breakers.get(vendor) or BreakerState()
        return state.to_record(), state.lasts_until(config)

    def _restore_breaker(self, vendor: str, record: object) -> None:
        self._breakers[vendor] = BreakerState.from_record(record)

    def _export_auth_stop(self, vendor: str, _: None) -> tuple[object, float]:
        state = self._auth_stops.get(vendor) or AuthStopState()
        return state.to_record(), state.lasts_until()

    def _restore_auth_stop(self, vendor: str, record: object) -> None:
        self._auth_stops[vendor] = AuthStopState.from_record(record)

    def _budgets_changed(self, vendor: str, charges: Sequence[Charge]) -> None:
        # On every request, so the keeper's call per entry is saved.
        changed = self._kept_budgets.changed
        for charge in charges:
            changed[f"{vendor}:{charge.key}"] = charge
        self._keeper.wake()

    async def charge_budgets(self, vendor: str, charges: Sequence[Charge], max_wait: float) -> Verdict:
        verdict = self._book.charge(vendor, charges, self._clock(), max_wait)
        if verdict.admitted:
            self._budgets_changed(vendor, charges)
        return verdict

    async def refund_budgets(self, vendor: str, charges: Sequence[Charge], at: float) -> None:
        self._book.refund(vendor, charges, self._clock(), at)
        self._budgets_changed(vendor, charges)

    async def adjust_budgets(self, vendor: str, charges: Sequence[Charge], said: Sequence[Adjustment]) -> Verdict:
        verdict = self._book.adjust(vendor, charges, self._clock(), said)
        self._budgets_changed(vendor, charges)
        return verdict

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
            stored = await self._local.get(f"token:{vendor}")
            if stored is None:
                return None
            self._tokens[vendor] = stored
        return self._tokens[vendor]

    async def put_token(self, vendor: str, value: bytes, previous: bytes | None) -> bool:
        if await self.get_token(vendor) != previous:
            return False
        self._tokens[vendor] = value
        await self._local.put(f"token:{vendor}", value)
        return True

    async def breaker_state(self, vendor: str, config: CircuitBreaker) -> int:
        return self._breakers.setdefault(vendor, BreakerState()).state(self._clock())

    async def breaker_admit(self, vendor: str, config: CircuitBreaker) -> Admission:
        return self._breakers.setdefault(vendor, BreakerState()).admit(config, self._clock())

    async def breaker_record(self, vendor: str, config: CircuitBreaker, failure: bool, probe: bool) -> int:
        state = self._breakers.setdefault(vendor, BreakerState()).record(config, self._clock(), failure, probe)
        self._keeper.changed(self._kept_breakers, vendor, config)
        return state

    def _auth_stop(self, vendor: str) -> AuthStopState:
        return self._auth_stops.setdefault(vendor, AuthStopState())

    async def auth_stop_peek(self, vendor: str) -> Standing:
        return self._auth_stop(vendor).peek(self._clock())

    async def auth_stop_admit(self, vendor: str) -> AuthAdmission:
        return self._auth_stop(vendor).admit(self._clock())

    async def auth_stop_record(self, vendor: str, config: AuthFailures, refused: bool, probe: bool) -> int:
        state = self._auth_stop(vendor).record(config, self._clock(), refused, probe)
        self._keeper.changed(self._kept_auth_stops, vendor, None)
        return state

    async def auth_stop_unanswered(self, vendor: str, probe: bool) -> int:
        state = self._auth_stop(vendor).unanswered(self._clock(), probe)
        self._keeper.changed(self._kept_auth_stops, vendor, None)
        return state

    async def auth_stop_clear(self, vendor: str) -> None:
        self._auth_stop(vendor).credentials_changed()
        self._keeper.changed(self._kept_auth_stops, vendor, None)

    async def put_dead_letter(self, entry: DeadLetter) -> None:
        await self._local.put_entry(entry.id, entry.vendor, entry.to_json())

    async def update_dead_letter(self, entry: DeadLetter) -> bool:
        return await self._local.update_entry(entry.id, entry.to_json())

    async def claim_dead_letter(self, entry_id: str, seconds: float) -> bool:
        now = self._clock()
        return await self._local.claim_entry(entry_id, now, now + seconds)

    async def claim_notice(self, name: str, seconds: float) -> bool:
        now = self._clock()
        if self._notices.get(name, 0.0) > now:
            return False
        self._notices = {n: until for n, until in self._notices.items() if until > now}
        self._notices[name] = now + seconds
        return True

    async def release_dead_letter(self, entry_id: str) -> None:
        await self._local.release_entry(entry_id)

    async def get_dead_letter(self, entry_id: str) -> DeadLetter | None:
        raw = await self._local.get_entry(entry_id)
        return DeadLetter.from_json(raw) if raw is not None else None

    async def delete_dead_letter(self, entry_id: str) -> bool:
        return await self._local.delete_entry(entry_id)

    async def list_dead_letters(self, vendor: str | None, after: str, limit: int) -> list[DeadLetter]:
        return [DeadLetter.from_json(raw) for raw in await self._local.list_entries(vendor, after, limit)]

    async def count_dead_letters(self, vendor: str) -> int:
        return await self._local.count_entries(vendor)

    async def add_stats(self, minutes: Mapping[tuple[str, int], Mapping[str, int]],
                        successes: Mapping[str, float]) -> None:
        rows = [(vendor, minute, f, v) for (vendor, minute), fields in minutes.items() for f, v in fields.items()]
        before = minute_of(self._clock() - KEEP)
        await self._local.add_stats(rows, list(successes.items()), before)

    async def read_stats(self, vendors: Sequence[str], spans: Sequence[tuple[int, int]]) -> StatsRead:
        read = await self._local.read_stats(vendors, spans)
        cutoff = self._clock() - KEEP
        return {
            vendor: ([dict(pairs) for pairs in sums], last if last is not None and last > cutoff else None)
            for vendor, (sums, last) in zip(vendors, read)
        }

    async def close(self) -> None:
        await self._keeper.close()
        self._local.close()
