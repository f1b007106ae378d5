"""Vendor budgets for the pipeline: which budgets a request is charged to, holding it until
its reserved time, what the vendor's answers teach us, and what to do when shared storage
fails (``on_storage_error``).

A charge is one storage call (one Lua script with Redis) that reserves the request's place
in every matching budget at once, or in none. A request that must wait sleeps until its
reserved time; one whose caller leaves meanwhile gives its place back.

While shared storage fails (its ``health`` decides when, for budgets and breakers alike)
each process charges its own fallback, and notes what it admitted there; the first
storage call after the outage hands that over, so that what was admitted meanwhile still
counts in every process.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from gateway.callers import ANONYMOUS
from gateway.config.model import Budget, Caller, Config, Policy
from gateway.core.budget import (
    BUCKET,
    FIXED,
    MAX_MARGIN,
    ROLLING,
    Adjustment,
    Charge,
    Level,
    Verdict,
    fixed_window,
    slot_width,
)
from gateway.budget_headers import MAX_PAUSE, rate_limit_headers, standing, vendor_said
from gateway.errors import BudgetExhausted, CallerGone, StorageError, StorageUnavailable
from gateway.metrics import Metrics
from gateway.storage import BudgetStore
from gateway.storage.health import RETRY
from gateway.storage.memory import LocalBudgets

log = logging.getLogger("gateway.budgets")

# How often a waiting request looks whether its caller is still connected (a local check).
CALLER_CHECK = 0.25


@dataclass
class Charged:
    """What one upstream attempt was charged to, and how the budgets stood after it."""

    budgets: tuple[Budget, ...]
    charges: tuple[Charge, ...]
    levels: tuple[Level, ...] = ()
    at: float = 0.0  # when the request was to go, by the clock of the store that charged it
    reserved: bool = False  # the budgets hold a place for it (not with on_storage_error: allow)
    local: bool = False  # charged to the in-process fallback

    def headers(self) -> dict[str, str]:
        return rate_limit_headers(self.budgets, self.levels)


class SlowestAnswer:
    """The longest a vendor took to answer: over a recent span (10 s buckets for the last
    ten minutes, so reading it costs the same at any request rate), or since start for
    longer spans."""

    STEP = 10.0
    RECENT = 600.0

    def __init__(self) -> None:
        self._buckets: dict[int, float] = {}
        self._ever: float | None = None

    def observe(self, seconds: float, now: float) -> None:
        bucket = int(now // self.STEP)
        if bucket not in self._buckets:  # a new bucket: the old ones past RECENT go
            for old in [b for b in self._buckets if (bucket - b) * self.STEP > self.RECENT]:
                del self._buckets[old]
        self._buckets[bucket] = max(self._buckets.get(bucket, 0.0), seconds)
        self._ever = max(self._ever or 0.0, seconds)

    def longest(self, now: float, span: float) -> float | None:
        """Over the last ``span`` seconds; None when nothing was seen in it."""
        if span > self.RECENT:
            return self._ever
        current = int(now // self.STEP)
        return max((v for b, v in self._buckets.items() if (current - b) * self.STEP <= span), default=None)


@dataclass
class _Unseen:
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


class Budgets:
    def __init__(
        self,
        storage: BudgetStore,
        metrics: Metrics,
        config: Config,
    ) -> None:
        self._storage = storage
        self._metrics = metrics
        self._on_error = config.on_storage_error
        self._workers = config.workers
        self._local = LocalBudgets(time.time)
        self._unseen: dict[str, dict[str, _Unseen]] = {}  # per vendor, per budget key
        self._handing: dict[str, asyncio.Lock] = {}
        self._windows: dict[int, tuple[float, float, float]] = {}
        self._pauses: dict[tuple[str, str], float] = {}  # this process's view, for sleeping waiters
        self._slowest: dict[str, SlowestAnswer] = {}
        self._last: dict[tuple[str, str], Level] = {}  # levels last read from shared storage
        self._seeded: set[tuple[str, str]] = set()  # fallback budgets started from those
        storage.health.watch(self._storage_changed)

    def follow(self, config: Config) -> None:
        """Take on a reloaded config's on_storage_error (the counts stay where they are)."""
        self._on_error = config.on_storage_error

    def charges_for(self, policy: Policy, method: str, path: str, caller: Caller) -> Charged:
        now = time.time()
        budgets = tuple(b for b in policy.budgets if b.match is None or b.match.fits(method, path))
        high = caller.priority == "high"
        slowest = self._slowest.get(policy.vendor)
        return Charged(budgets, tuple(self._charge(b, caller.name, high, now, slowest) for b in budgets))

    def observe(self, vendor: str, seconds: float) -> None:
        """How long an upstream attempt took to answer (or fail)."""
        self._slowest.setdefault(vendor, SlowestAnswer()).observe(seconds, time.time())

    def _charge(
        self, budget: Budget, caller: str, high: bool, now: float, slowest: SlowestAnswer | None = None
    ) -> Charge:
        window = (0.0, 0.0, 0.0)
        if budget.window == FIXED:
            window = self._windows.get(id(budget), window)
            if now >= window[1]:
                window = self._windows[id(budget)] = fixed_window(now, budget.per, budget.reset, budget.timezone)
        margin = 0.0
        if budget.window == ROLLING:
            # The vendor starts counting a request when it arrives, somewhere between our
            # send and its answer: the count lasts that much longer, as long as the slowest
            # answer while it counts (the most, until the vendor's answers have been timed).
            most = budget.per * MAX_MARGIN
            latency = slowest.longest(now, budget.per + most) if slowest is not None else None
            margin = most if latency is None else min(most, latency)
        kind = budget.window or BUCKET
        # The kind and span are in the key: a policy changed to other ones starts afresh
        # instead of reading counts kept in another form.
        key = f"{budget.name}:{kind}:{budget.per:g}"
        return Charge(
            key=key if budget.key == "shared" else f"{key}:{caller}",
            kind=kind,
            limit=budget.limit,
            per=budget.per,
            cost=budget.cost,
            held=0.0 if high else budget.reserve * budget.limit,
            shadow=budget.shadow,
            window=window,
            margin=margin,
        )

    async def charge(self, policy: Policy, charged: Charged, max_wait: float, gone: Callable[[], bool]) -> None:
        """Charge the request, holding it until its reserved time; raises BudgetExhausted when
        that is over ``max_wait`` seconds away, CallerGone when the caller left meanwhile."""
        if not charged.charges:
            return
        vendor = policy.vendor
        started = time.time()
        latest, first, waited = started + max_wait, True, False
        while True:
            allowed = max(0.0, latest - time.time())
            verdict = await self._shared(
                vendor, lambda store, charges: store.charge_budgets(vendor, charges, allowed), charged
            )
            if verdict is None:  # storage failed and on_storage_error: allow
                return
            charged.levels, charged.at = verdict.levels, verdict.at
            if charged.local and verdict.admitted:
                self._count_unseen(vendor, charged, verdict.at, 1)
            self._report(vendor, charged, verdict, count_exhausted=first)
            if not verdict.admitted:
                name = charged.budgets[verdict.blocking].name if verdict.blocking >= 0 else None
                raise self._exhausted(policy, charged, name, verdict.wait, max_wait)
            charged.reserved, first = True, False
            if verdict.wait <= 0:
                break
            waited = True
            try:
                held = await self._hold(verdict.wait, gone)
            except asyncio.CancelledError:  # a server with handler_cancellation: the caller left
                await self.refund(vendor, charged)
                raise
            if not held:
                await self.refund(vendor, charged)
                raise CallerGone("the caller left while waiting for budget", vendor=vendor)
            # A pause learnt while this request slept (an upstream 429) came after its place
            # was given: going now would go early. It gives the place back and asks again.
            now = time.time()
            if not any(self._pauses.get((vendor, c.key), 0.0) > now for c in charged.charges):
                break
            await self.refund(vendor, charged)
        self._metrics.budget_wait.labels(vendor).observe(time.time() - started if waited else 0.0)
        if waited:  # the levels read when it queued are old news: read them as it goes
            now_levels = await self._peek(vendor, charged)
            if now_levels is not None:
                charged.levels = now_levels.levels

    async def _hold(self, wait: float, gone: Callable[[], bool]) -> bool:
        end = time.time() + wait
        while (left := end - time.time()) > 0:
            await asyncio.sleep(min(left, CALLER_CHECK))
            if gone():
                return False
        return True

    async def refund(self, vendor: str, charged: Charged) -> None:
        """Give a reservation back (best effort: a failed refund only wastes the place)."""
        charged.reserved = False
        store, charges = self._store_of(charged)
        if charged.local:
            self._count_unseen(vendor, charged, charged.at, -1)
        try:
            await store.refund_budgets(vendor, charges, charged.at)
        except StorageError:
            pass  # the place stays taken until its time passes: a waste, nothing worse

    async def follow_answer(self, policy: Policy, charged: Charged, status: int, retry_after: float | None,
                    headers: Any) -> None:
        """Apply what the vendor's answer says: a 429 or 503 with Retry-After pauses every
        charged budget; ``follow`` headers lower our counters to the vendor's."""
        if not charged.reserved:
            return
        said = [vendor_said(budget, status, retry_after, headers, time.time()) for budget in charged.budgets]
        if all(s is None for s in said):
            return
        vendor = policy.vendor
        adjustments = [s or Adjustment() for s in said]
        until = 0.0
        if retry_after is not None and status in (429, 503):
            until = time.time() + min(retry_after, MAX_PAUSE)
            for charge in charged.charges:
                if not charge.shadow:
                    key = (vendor, charge.key)
                    self._pauses[key] = max(self._pauses.get(key, 0.0), until)
            log.info("%s answered %d: budgets paused for %.1fs", vendor, status, min(retry_after, MAX_PAUSE))
        try:
            verdict = await self._shared(
                vendor, lambda store, charges: store.adjust_budgets(vendor, charges, adjustments), charged
            )
        except StorageUnavailable:  # on_storage_error: reject refuses requests, not what the vendor said
            return
        if verdict is None:
            return
        if charged.local and until:
            for charge in charged.charges:
                if not charge.shadow:
                    unseen = self._unseen_of(vendor, charge)
                    unseen.paused = max(unseen.paused, until)
        charged.levels = verdict.levels
        for budget, lv in zip(charged.budgets, verdict.levels):
            self._metrics.budget_remaining.labels(vendor, budget.name).set(lv.remaining)

    async def give_back(self, policy: Policy, charged: Charged) -> None:
        """An attempt that never reached the vendor (breaker open, no credential, connection
        refused) costs nothing: its charge goes back."""
        if charged.reserved:
            await self.refund(policy.vendor, charged)

    async def status(self, policy: Policy, callers: Sequence[Caller]) -> list[dict[str, object]]:
        """Each budget's limit, remaining and reset (per caller for ``key: caller``)."""
        out: list[dict[str, object]] = []
        vendor = policy.vendor
        users = [c for c in callers if c.may_use(vendor)] or [ANONYMOUS]
        for budget in policy.budgets:
            entry: dict[str, object] = {
                "name": budget.name,
                "kind": budget.window or BUCKET,
                "limit": budget.limit,
                "per": budget.per,
                "cost": budget.cost,
                "shadow": budget.shadow,
            }
            who = users if budget.key == "caller" else [ANONYMOUS]
            now = time.time()
            charged = Charged((budget,) * len(who), tuple(self._charge(budget, c.name, True, now) for c in who))
            verdict = await self._peek(vendor, charged)
            if verdict is None:
                entry.update(remaining=None, reset=None)
            elif budget.key == "caller":
                entry["callers"] = {c.name: standing(lv) for c, lv in zip(who, verdict.levels)}
            else:
                entry.update(standing(verdict.levels[0]))
            out.append(entry)
        return out

    def _store_of(self, charged: Charged) -> tuple[BudgetStore | LocalBudgets, Sequence[Charge]]:
        """The store that charged a request, and its charges as that store knows them."""
        if charged.local:
            return self._local, self._scaled(charged.charges)
        return self._storage, charged.charges

    async def _peek(self, vendor: str, charged: Charged) -> Verdict | None:
        """How the budgets stand; None when no store can say."""
        try:
            return await self._shared(vendor, lambda store, charges: store.peek_budgets(vendor, charges), charged)
        except StorageUnavailable:
            return None

    async def _shared(
        self, vendor: str, call: Callable[[Any, Sequence[Charge]], Awaitable[Verdict]], charged: Charged
    ) -> Verdict | None:
        """Run a budget call on shared storage, or on the fallback while storage fails."""
        try:
            if vendor in self._unseen:
                # Calls wait for the hand-over: a budget charged before it would not count
                # what the fallback admitted.
                async with self._handing.setdefault(vendor, asyncio.Lock()):
                    if vendor in self._unseen:
                        await self._hand_over(vendor)
            result = await call(self._storage, charged.charges)
        except StorageError:
            pass
        else:
            for charge, lv in zip(charged.charges, result.levels):
                self._last[(vendor, charge.key)] = lv
            charged.local = False
            return result
        if self._on_error == "reject":
            raise StorageUnavailable("budget storage is unavailable", retry_after=RETRY)
        if self._on_error == "allow":
            return None
        charged.local = True
        scaled = self._scaled(charged.charges)
        await self._seed(vendor, scaled)
        return await call(self._local, scaled)

    async def _hand_over(self, vendor: str) -> None:
        """Tell shared storage what the fallback admitted (and the pauses it learnt) while
        storage failed; raises StorageError when it still fails."""
        unseen = list(self._unseen.pop(vendor).values())  # taken first: a concurrent call must not send it too
        now = time.time()
        try:
            await self._storage.adjust_budgets(vendor, [u.charge for u in unseen], [u.adjustment(now) for u in unseen])
        except BaseException:  # failed or cancelled: kept for the next call (at worst counted twice)
            for u in unseen:
                kept = self._unseen_of(vendor, u.charge)
                kept.paused = max(kept.paused, u.paused)
                for at, units in u.spent.values():
                    kept.count(at, units)
            raise

    def _unseen_of(self, vendor: str, charge: Charge) -> _Unseen:
        return self._unseen.setdefault(vendor, {}).setdefault(charge.key, _Unseen(charge))

    def _count_unseen(self, vendor: str, charged: Charged, at: float, sign: int) -> None:
        for charge in charged.charges:
            self._unseen_of(vendor, charge).count(at, sign * charge.cost)

    async def _seed(self, vendor: str, scaled: Sequence[Charge]) -> None:
        """A budget's first use in the fallback starts from its level last read from shared
        storage (this process's share of it), not from full."""
        fresh = [c for c in scaled if (vendor, c.key) not in self._seeded and (vendor, c.key) in self._last]
        if fresh:
            said = [Adjustment(remaining=self._last[(vendor, c.key)].remaining / self._workers) for c in fresh]
            await self._local.adjust_budgets(vendor, fresh, said)
        self._seeded.update((vendor, c.key) for c in scaled)

    def storage_answers(self) -> None:
        """Shared storage answered /readyz's ping: the fallback ends."""
        self._storage.health.answered()

    def _storage_changed(self, answering: bool) -> None:
        self._metrics.storage_fallback.set(0 if answering else 1)
        if answering:  # the next outage's fallback starts again from the shared levels
            self._seeded.clear()
            self._local = LocalBudgets(time.time)

    def _scaled(self, charges: Sequence[Charge]) -> list[Charge]:
        """The fallback's share of each budget: every process limits alone, so each takes
        1/workers of it (at least one request's cost)."""
        if self._workers == 1:
            return list(charges)
        return [
            replace(c, limit=max(c.limit / self._workers, c.cost + c.held / self._workers), held=c.held / self._workers)
            for c in charges
        ]

    def _report(self, vendor: str, charged: Charged, verdict: Verdict, *, count_exhausted: bool) -> None:
        for budget, lv, exceeded in zip(charged.budgets, verdict.levels, verdict.exceeded):
            self._metrics.budget_remaining.labels(vendor, budget.name).set(lv.remaining)
            if exceeded and count_exhausted:
                self._metrics.budget_exhausted.labels(vendor, budget.name).inc()

    def _exhausted(
        self, policy: Policy, charged: Charged, budget: str | None, wait: float, max_wait: float
    ) -> BudgetExhausted:
        what = f"budget {budget!r}" if budget else "a paused budget"
        return BudgetExhausted(
            f"{what} of {policy.vendor} admits this request in {wait:.2f}s; it may wait {max_wait:g}s",
            vendor=policy.vendor,
            budget=budget,
            retry_after=wait,
            extra=charged.headers(),
        )
