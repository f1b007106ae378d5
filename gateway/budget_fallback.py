"""Where budgets are charged while shared storage fails (``on_storage_error``): ``reject``
refuses the request, ``allow`` lets it through uncounted, ``local`` charges a fallback in
this process.

The local fallback gives each process its share of every budget (1/workers of it),
starting from the level last read from shared storage, and notes what it admitted
there; the first storage call after the outage hands that over, so that what was
admitted meanwhile still counts in every process. Whether storage fails is decided by
its ``health``, for budgets and breakers alike.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from gateway.core.budget import MAX_MARGIN, Adjustment, Charge, Level, Verdict, slot_width
from gateway.errors import StorageError, StorageUnavailable
from gateway.storage import BudgetStore
from gateway.storage.health import RETRY
from gateway.storage.memory import LocalBudgets

# A budget call, run on shared storage or on the local fallback.
BudgetCall = Callable[[Any, Sequence[Charge]], Awaitable[Verdict]]


@dataclass
class Unseen:
    """What the fallback did to one budget that shared storage has not heard of: units
    admitted (less those given back) per slot, as (latest time, units), and a pause."""

    charge: Charge
    spent: dict[int, list[float]] = field(default_factory=dict)
    paused: float = 0.0

    def count(self, at: float, units: float) -> None:
        width = slot_width(self.charge)
        slot = math.floor(at / width)
        if slot not in self.spent:  # what no longer counts anywhere (nor lowers a bucket) goes
            gone = at - self.charge.per * (1 + MAX_MARGIN) - 2 * width
            for old in [s for s, (when, _) in self.spent.items() if when < gone]:
                del self.spent[old]
        entry = self.spent.setdefault(slot, [at, 0.0])
        entry[0], entry[1] = max(entry[0], at), entry[1] + units
        if abs(entry[1]) < 1e-9:
            del self.spent[slot]

    def adjustment(self, now: float) -> Adjustment:
        spent = tuple((at, units) for at, units in sorted(self.spent.values()))
        return Adjustment(pause=self.paused - now if self.paused > now else None, spent=spent)


class BudgetFallback:
    """Runs budget calls on shared storage, or on this process's fallback while it fails."""

    def __init__(self, storage: BudgetStore, on_error: str, workers: int) -> None:
        self._storage = storage
        self._on_error = on_error
        self._workers = workers
        self._local = LocalBudgets(time.time)
        self._unseen: dict[str, dict[str, Unseen]] = {}  # per vendor, per budget key
        self._handing: dict[str, asyncio.Lock] = {}
        self._last: dict[tuple[str, str], Level] = {}  # levels last read from shared storage
        self._seeded: set[tuple[str, str]] = set()  # fallback budgets started from those

    async def run(self, vendor: str, call: BudgetCall, charges: Sequence[Charge]) -> tuple[Verdict | None, bool]:
        """The call's verdict, and whether the fallback gave it; no verdict with
        ``on_storage_error: allow``. Raises StorageUnavailable with ``reject``."""
        try:
            if vendor in self._unseen:
                # Calls wait for the hand-over: a budget charged before it would not count
                # what the fallback admitted.
                async with self._handing.setdefault(vendor, asyncio.Lock()):
                    if vendor in self._unseen:
                        await self._hand_over(vendor)
            result = await call(self._storage, charges)
        except StorageError:
            return await self.failed(vendor, call, charges)
        self.seen(vendor, charges, result.levels)
        return result, False

    def pending(self, vendor: str) -> bool:
        """Whether the fallback admitted what shared storage has not heard of yet: a call
        then goes through ``run``, which hands that over first."""
        return vendor in self._unseen

    def seen(self, vendor: str, charges: Sequence[Charge], levels: Sequence[Level]) -> None:
        """Shared storage answered a call with these levels."""
        for charge, lv in zip(charges, levels):
            self._last[(vendor, charge.key)] = lv

    async def failed(self, vendor: str, call: BudgetCall, charges: Sequence[Charge]) -> tuple[Verdict | None, bool]:
        """Shared storage failed the call: what ``on_storage_error`` makes of it (see ``run``)."""
        if self._on_error == "reject":
            raise StorageUnavailable("budget storage is unavailable", retry_after=RETRY)
        if self._on_error == "allow":
            return None, False
        scaled = self.scaled(charges)
        await self._seed(vendor, scaled)
        return await call(self._local, scaled), True

    def store_of(self, charges: Sequence[Charge], local: bool) -> tuple[BudgetStore | LocalBudgets, Sequence[Charge]]:
        """The store that charged a request, and its charges as that store knows them."""
        if local:
            return self._local, self.scaled(charges)
        return self._storage, charges

    def unseen_of(self, vendor: str, charge: Charge) -> Unseen:
        return self._unseen.setdefault(vendor, {}).setdefault(charge.key, Unseen(charge))

    def count(self, vendor: str, charges: Sequence[Charge], at: float, sign: int) -> None:
        """What the fallback admitted (``sign`` 1) or was given back (-1), for the hand-over."""
        for charge in charges:
            self.unseen_of(vendor, charge).count(at, sign * charge.cost)

    def restart(self) -> None:
        """Storage answers again: the next outage's fallback starts from the shared levels."""
        self._seeded.clear()
        self._local = LocalBudgets(time.time)

    def scaled(self, charges: Sequence[Charge]) -> list[Charge]:
        """The fallback's share of each budget: every process limits alone, so each takes
        1/workers of it (at least one request's cost)."""
        if self._workers == 1:
            return list(charges)
        return [
            replace(c, limit=max(c.limit / self._workers, c.cost + c.held / self._workers), held=c.held / self._workers)
            for c in charges
        ]

    async def _hand_over(self, vendor: str) -> None:
        """Tell shared storage what the fallback admitted (and the pauses it learnt) while
        storage failed; raises StorageError when it still fails."""
        unseen = list(self._unseen.pop(vendor).values())  # taken first: a concurrent call must not send it too
        now = time.time()
        try:
            await self._storage.adjust_budgets(vendor, [u.charge for u in unseen], [u.adjustment(now) for u in unseen])
        except BaseException:  # failed or cancelled: kept for the next call (at worst counted twice)
            for u in unseen:
                kept = self.unseen_of(vendor, u.charge)
                kept.paused = max(kept.paused, u.paused)
                for at, units in u.spent.values():
                    kept.count(at, units)
            raise

    async def _seed(self, vendor: str, scaled: Sequence[Charge]) -> None:
        """A budget's first use in the fallback starts from its level last read from shared
        storage (this process's share of it), not from full."""
        fresh = [c for c in scaled if (vendor, c.key) not in self._seeded and (vendor, c.key) in self._last]
        if fresh:
            said = [Adjustment(remaining=self._last[(vendor, c.key)].remaining / self._workers) for c in fresh]
            await self._local.adjust_budgets(vendor, fresh, said)
        self._seeded.update((vendor, c.key) for c in scaled)
