"""Vendor budgets for the pipeline: which budgets a request is charged to, holding it until
its reserved time, what the vendor's answers teach us, and what to do when shared storage
fails (``on_storage_error``).

A charge is one storage call (one Lua script with Redis) that reserves the request's place
in every matching budget at once, or in none. A request that must wait sleeps until its
reserved time; one whose caller leaves meanwhile gives its place back.

While shared storage fails, gateway.budget_fallback decides what a budget call does
(``on_storage_error``), and charges this process's own fallback for ``local``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

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
)
from gateway.budget_fallback import BudgetCall, BudgetFallback, Unseen
from gateway.budget_headers import PAUSING, rate_limit_headers, standing, strictest, vendor_said
from gateway.core.signals import BudgetWindow, Headers, Reading, smaller_limit
from gateway.errors import BudgetExhausted, CallerGone, StorageError, StorageUnavailable
from gateway.forecast import BudgetForecasts
from gateway.metrics import Children, Metrics
from gateway.storage import BudgetStore
from gateway.storage.memory import LocalBudgets

log = logging.getLogger("gateway.budgets")

# How often a waiting request looks whether its caller is still connected (a local check).
CALLER_CHECK = 0.25
# Charges kept made (per budget, caller and priority) before they are all made afresh.
MADE_MAX = 4096


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


class Budgets:
    def __init__(
        self,
        storage: BudgetStore,
        metrics: Metrics,
        config: Config,
    ) -> None:
        self._storage = storage
        self._metrics = metrics
        self._fallback = BudgetFallback(storage, config.on_storage_error, config.workers)
        self._windows: dict[int, tuple[float, float, float]] = {}
        self._pauses: dict[tuple[str, str], float] = {}  # this process's view, for sleeping waiters
        self._slowest: dict[str, SlowestAnswer] = {}
        self.forecasts = BudgetForecasts(metrics, config.workers)
        # Smaller limits the vendors said they have, per (vendor, budget name, limit, per).
        self._limits: dict[tuple[str, str, int, float], int] = {}
        # Each charge made, per (id of its budget, caller, priority high): with that budget.
        self._made: dict[tuple[int, str, bool], tuple[Budget, Charge]] = {}
        # For a policy of buckets that all match every request, per (its id, caller, priority
        # high): it and its charges, the same until a vendor says a smaller limit.
        self._steady: dict[tuple[int, str, bool], tuple[Policy, tuple[Charge, ...]]] = {}
        self._remaining = Children(metrics.budget_remaining)
        self._exhausted_of = Children(metrics.budget_exhausted)
        self._wait_of = Children(metrics.budget_wait)
        storage.health.watch(self._storage_changed)

    def follow(self, config: Config) -> None:
        """Take on a reloaded config's on_storage_error (the counts stay where they are)."""
        self._on_error = config.on_storage_error

    def charges_for(self, policy: Policy, method: str, path: str, caller: Caller) -> Charged:
        high = caller.priority == "high"
        steady = self._steady.get((id(policy), caller.name, high))
        if steady is not None and steady[0] is policy:
            return Charged(policy.budgets, steady[1])
        now = time.time()
        budgets = policy.budgets
        if any(b.match is not None for b in budgets):
            budgets = tuple(b for b in budgets if b.match is None or b.match.fits(method, path))
        slowest = self._slowest.get(policy.vendor)
        charges = tuple(self._charge(policy.vendor, b, caller.name, high, now, slowest) for b in budgets)
        if budgets is policy.budgets and all(c.kind == BUCKET for c in charges):
            if len(self._steady) >= MADE_MAX:
                self._steady.clear()
            self._steady[(id(policy), caller.name, high)] = (policy, charges)
        return Charged(budgets, charges)

    def observe(self, vendor: str, seconds: float) -> None:
        """How long an upstream attempt took to answer (or fail)."""
        self._slowest.setdefault(vendor, SlowestAnswer()).observe(seconds, time.time())

    def _charge(
        self, vendor: str, budget: Budget, caller: str, high: bool, now: float, slowest: SlowestAnswer | None = None
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
        limit = self._limits.get((vendor, budget.name, budget.limit, budget.per), budget.limit) if self._limits \
            else budget.limit
        # The same charge most of the time (always for a bucket): made once, not per request.
        made = self._made.get((id(budget), caller, high))
        if made is not None:
            same, charge = made
            if same is budget and charge.limit == limit and charge.window == window and charge.margin == margin:
                return charge
        if len(self._made) >= MADE_MAX:
            self._made.clear()
        charge = self._new_charge(budget, caller, high, limit, window, margin)
        self._made[(id(budget), caller, high)] = (budget, charge)
        return charge

    @staticmethod
    def _new_charge(budget: Budget, caller: str, high: bool, limit: int, window: tuple[float, float, float],
                    margin: float) -> Charge:
        kind = budget.window or BUCKET
        # The kind and span are in the key: a policy changed to other ones starts afresh
        # instead of reading counts kept in another form.
        key = f"{budget.name}:{kind}:{budget.per:g}"
        return Charge(
            key=key if budget.key == "shared" else f"{key}:{caller}",
            kind=kind,
            limit=limit,
            per=budget.per,
            cost=budget.cost,
            held=0.0 if high else budget.reserve * limit,
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
            if self._fallback.pending(vendor):
                verdict = await self._shared(
                    vendor, lambda store, charges: store.charge_budgets(vendor, charges, allowed), charged
                )
            else:  # the common case, one coroutine less (``_shared``'s work, inline)
                try:
                    verdict = await self._storage.charge_budgets(vendor, charged.charges, allowed)
                except StorageError:
                    verdict, charged.local = await self._fallback.failed(
                        vendor, lambda store, charges: store.charge_budgets(vendor, charges, allowed), charged.charges
                    )
                else:
                    self._fallback.seen(vendor, charged.charges, verdict.levels)
                    charged.local = False
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
        self._wait_of(vendor).observe(time.time() - started if waited else 0.0)
        self.forecasts.charged(vendor, charged.budgets, charged.charges, charged.levels)
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

    @staticmethod
    def follows(policy: Policy, charged: Charged, status: int, retry_after: float | None) -> bool:
        """Whether ``follow_answer`` has anything to do with an answer (most have nothing: the
        caller then spares its await)."""
        return charged.reserved and (status in policy.refund_on or _reads_answer(charged, status, retry_after))

    async def follow_answer(self, policy: Policy, charged: Charged, status: int, retry_after: float | None,
                            headers: Headers, head: bytes = b"") -> None:
        """Apply what the vendor's answer says (``head``: the first bytes of its body, when
        a quota refusal may be in it): a 429 or 503 with Retry-After, or a quota refusal,
        pauses the budgets; what ``follow`` reads lowers them, the strictest reading winning.
        A status in ``refund_on`` gives the charge back after, the pause still holding."""
        if not charged.reserved:
            return
        if not _reads_answer(charged, status, retry_after):
            if status in policy.refund_on:  # the answer says nothing of the budgets
                await self.refund(policy.vendor, charged)
            return
        vendor, now = policy.vendor, time.time()
        adjustments: list[Adjustment] = []
        for budget, charge, level in zip(charged.budgets, charged.charges, self._levels_of(charged)):
            readings = vendor_said(budget, BudgetWindow.of(charge, level), status, retry_after, headers, head, now)
            self._learn_limit(vendor, budget, readings)
            adjustments.append(strictest(readings) or Adjustment())
        if any(a != Adjustment() for a in adjustments):
            await self._adjust(vendor, charged, status, adjustments, now)
        if status in policy.refund_on:
            await self.refund(vendor, charged)

    async def _adjust(self, vendor: str, charged: Charged, status: int, adjustments: Sequence[Adjustment],
                      now: float) -> None:
        paused = 0.0
        for charge, said in zip(charged.charges, adjustments):
            if said.pause and not charge.shadow:
                key = (vendor, charge.key)
                self._pauses[key] = max(self._pauses.get(key, 0.0), now + said.pause)
                paused = max(paused, said.pause)
        if paused:
            log.info("%s answered %d: budgets paused for %.1fs", vendor, status, paused)
        try:
            verdict = await self._shared(
                vendor, lambda store, charges: store.adjust_budgets(vendor, charges, adjustments), charged
            )
        except StorageUnavailable:  # on_storage_error: reject refuses requests, not what the vendor said
            return
        if verdict is None:
            return
        if charged.local:
            for charge, said in zip(charged.charges, adjustments):
                if said.pause and not charge.shadow:
                    unseen = self._unseen_of(vendor, charge)
                    unseen.paused = max(unseen.paused, now + said.pause)
        charged.levels = verdict.levels
        for budget, lv in zip(charged.budgets, verdict.levels):
            self._remaining(vendor, budget.name).set(lv.remaining)

    @staticmethod
    def _levels_of(charged: Charged) -> Sequence[Level]:
        """The levels the charge left (a full budget for one the charge did not report)."""
        if len(charged.levels) == len(charged.charges):
            return charged.levels
        return [Level(int(c.limit), c.per) for c in charged.charges]

    def _learn_limit(self, vendor: str, budget: Budget, readings: Sequence[Reading]) -> None:
        """A vendor limit smaller than the budget's over the same span becomes the budget's
        (for this process, while the policy keeps that limit), said once in the log."""
        limit_key = (vendor, budget.name, budget.limit, budget.per)
        for reading in readings:
            smaller = smaller_limit(reading, self._limits.get(limit_key, budget.limit), budget.per)
            if smaller is None:
                continue
            self._limits[limit_key] = max(smaller, budget.cost)
            self._steady.clear()  # the charges made with the old limit
            log.warning("%s says its limit for budget %r is %d per %gs, under the policy's %d: the budget "
                        "uses %d", vendor, budget.name, smaller, budget.per, budget.limit, self._limits[limit_key])

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
            charged = Charged((budget,) * len(who), tuple(self._charge(vendor, budget, c.name, True, now) for c in who))
            verdict = await self._peek(vendor, charged)
            if verdict is None:
                entry.update(remaining=None, reset=None, exhausts_in=None)
                out.append(entry)
                continue
            if budget.key == "caller":
                entry["callers"] = {c.name: standing(lv) for c, lv in zip(who, verdict.levels)}
            else:
                entry.update(standing(verdict.levels[0]))
            forecasts = [self.forecasts.exhausts_in(vendor, budget, lv, c.key, now)
                         for c, lv in zip(charged.charges, verdict.levels)]
            entry["exhausts_in"] = min((round(f, 1) for f in forecasts if f is not None), default=None)
            out.append(entry)
        return out

    async def _peek(self, vendor: str, charged: Charged) -> Verdict | None:
        """How the budgets stand; None when no store can say."""
        try:
            return await self._shared(vendor, lambda store, charges: store.peek_budgets(vendor, charges), charged)
        except StorageUnavailable:
            return None

    async def _shared(self, vendor: str, call: BudgetCall, charged: Charged) -> Verdict | None:
        """Run a budget call on shared storage, or on the fallback while storage fails."""
        verdict, charged.local = await self._fallback.run(vendor, call, charged.charges)
        return verdict

    def _store_of(self, charged: Charged) -> tuple[BudgetStore | LocalBudgets, Sequence[Charge]]:
        return self._fallback.store_of(charged.charges, charged.local)

    def _unseen_of(self, vendor: str, charge: Charge) -> Unseen:
        return self._fallback.unseen_of(vendor, charge)

    def _count_unseen(self, vendor: str, charged: Charged, at: float, sign: int) -> None:
        self._fallback.count(vendor, charged.charges, at, sign)

    def storage_answers(self) -> None:
        """Shared storage answered /readyz's ping: the fallback ends."""
        self._storage.health.answered()

    def _storage_changed(self, answering: bool) -> None:
        self._metrics.storage_fallback.set(0 if answering else 1)
        if answering:
            self._fallback.restart()

    def _report(self, vendor: str, charged: Charged, verdict: Verdict, *, count_exhausted: bool) -> None:
        for budget, lv, exceeded in zip(charged.budgets, verdict.levels, verdict.exceeded):
            self._remaining(vendor, budget.name).set(lv.remaining)
            if exceeded and count_exhausted:
                self._exhausted_of(vendor, budget.name).inc()

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


def _reads_answer(charged: Charged, status: int, retry_after: float | None) -> bool:
    """Whether an answer says anything of the budgets: a pausing status with Retry-After, or
    a budget that follows the vendor's signals."""
    if retry_after is not None and status in PAUSING:
        return True
    for budget in charged.budgets:  # (no generator: this runs on every answer)
        if budget.follow is not None:
            return True
    return False
