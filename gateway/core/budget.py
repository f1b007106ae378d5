"""Budget arithmetic: token buckets and hard quotas, with the clock passed in.

Every charge is a *reservation*: a request that cannot go now is given the exact time it
may go, and the budget is charged for that time at once. Waiters therefore need no
polling and are admitted in the order they asked, in every process sharing the storage.

A token bucket is kept as one number, its theoretical arrival time (``tat``, the GCRA
form): the bucket is full at ``tat`` and each unit of cost pushes ``tat`` one emission
interval (``per / limit``) later. A request of cost c fits at time t when
``max(tat, t) + c * interval - t`` stays within the bucket's span (``per``, less the
reserve held back from the caller).

A rolling quota counts units in ``SLOTS`` slots per window. A slot still counts while
any part of it lies inside the last ``per`` seconds, and for a margin after that (at
least one slot): the vendor's window starts when our request *arrives*, and requests
take varying time to get there, so the margin is the longest the vendor has lately taken
to answer. The count can only overstate what was sent: the quota is never exceeded, at
the price of admitting up to one slot plus the margin late. A fixed quota counts units
per calendar window (start, end).

The Redis script ``gateway/storage/lua/budget.lua`` implements the same arithmetic
on a hash per budget; ``tests/core/test_budget.py`` runs one table against both.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import NamedTuple
from zoneinfo import ZoneInfo

BUCKET = "bucket"
ROLLING = "rolling"
FIXED = "fixed"

SLOTS = 100
# The most a rolling quota's margin may be, as a share of ``per``. Counts are forgotten
# only past this longest margin, so a process using a shorter one deletes nothing that
# another process's longer margin still counts.
MAX_MARGIN = 0.1
# Float sums of emission intervals may land a hair after the exact instant.
EPSILON = 1e-9


@dataclass(frozen=True)
class Charge:
    """One budget a request is charged to, as the arithmetic (and the script) needs it."""

    key: str  # the budget's name, plus ":caller" for a budget kept per caller
    kind: str  # BUCKET | ROLLING | FIXED
    limit: float
    per: float
    cost: int
    held: float = 0.0  # units the request may not take: the reserve, below priority high
    shadow: bool = False
    window: tuple[float, float, float] = (0.0, 0.0, 0.0)  # FIXED: start, end, end of the next
    margin: float = 0.0  # ROLLING: how long a count outlasts its window (at least one slot)


@dataclass
class BudgetState:
    """What storage keeps per budget (per caller, for ``key: caller``)."""

    tat: float = 0.0  # BUCKET: when the bucket is full again
    paused: float = 0.0  # nothing is admitted before this time (an upstream Retry-After)
    counts: dict[int, float] = field(default_factory=dict)  # quotas: slot, or window start (ms) -> units

    def to_record(self) -> dict[str, object]:
        """The state as plain JSON values, to be kept across a restart."""
        return {"tat": self.tat, "paused": self.paused, "counts": [[slot, units] for slot, units in self.counts.items()]}

    @classmethod
    def from_record(cls, record: object) -> BudgetState:
        """A state read back from ``to_record``; ValueError for anything else."""
        if not isinstance(record, dict):
            raise ValueError("not a budget state")
        counts = record.get("counts")
        if not isinstance(counts, list) or not all(isinstance(pair, list) and len(pair) == 2 for pair in counts):
            raise ValueError("budget counts are not a list of [slot, units]")
        return cls(
            tat=_finite(record.get("tat")),
            paused=_finite(record.get("paused")),
            counts={_whole(slot): _finite(units) for slot, units in counts},
        )


def _finite(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{value!r} is not a finite number")
    return float(value)


def _whole(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{value!r} is not a whole number")
    return value


class Level(NamedTuple):  # a tuple, not a frozen dataclass: one or more on every request, cheaper to make
    remaining: int  # whole units left now (a pause spends none of them)
    reset: float  # seconds until the budget is whole again (quotas: until the window moves)
    paused_for: float = 0.0  # seconds until a vendor's pause ends: nothing goes before


class Verdict(NamedTuple):
    admitted: bool
    wait: float  # seconds from now until the request goes (admitted) or could go (refused)
    blocking: int  # index of the charge that decides the wait, -1 when nothing waits
    levels: tuple[Level, ...]  # per charge, after the verdict
    exceeded: tuple[bool, ...]  # per charge: could not admit at once (shadow charges too)
    at: float  # when the request goes (or could go)


def interval(charge: Charge) -> float:
    return charge.per / charge.limit


def slot_width(charge: Charge) -> float:
    return charge.per / SLOTS


def _kept(charge: Charge) -> float:
    """How long after its start a slot keeps counting once it leaves the window: its width,
    plus the margin (at least one slot more)."""
    width = slot_width(charge)
    return width + max(charge.margin, width)


def _ms(t: float) -> int:
    return math.floor(t * 1000 + 0.5)


def _window_at(charge: Charge, t: float) -> int | None:
    """The start (ms) of the fixed window holding ``t``; None beyond the next one."""
    start, end, next_end = charge.window
    if t < end:
        return _ms(start)
    if t < next_end:
        return _ms(end)
    return None


def _live_slots(charge: Charge, state: BudgetState, t: float) -> list[int]:
    """The rolling quota's slots that still count at ``t``, oldest first."""
    width, kept = slot_width(charge), _kept(charge)
    return sorted(slot for slot in state.counts if slot * width + kept > t - charge.per)


def _rolling_used(charge: Charge, state: BudgetState, t: float) -> float:
    return sum(state.counts[slot] for slot in _live_slots(charge, state, t))


def earliest(charge: Charge, state: BudgetState, now: float) -> float:
    """When the charge fits, at or after ``now`` (a fixed quota full for this window and the
    next answers the end of the next: no sooner, and no later is known)."""
    t = max(now, state.paused)
    if charge.kind == BUCKET:
        span = (charge.limit - charge.held) * interval(charge)
        return max(t, state.tat + charge.cost * interval(charge) - span)
    room = charge.limit - charge.held - charge.cost
    if charge.kind == ROLLING:
        counted = _live_slots(charge, state, t)
        used = sum(state.counts[slot] for slot in counted)
        for slot in counted:
            if used <= room + EPSILON:
                break
            used -= state.counts[slot]
            t = slot * slot_width(charge) + _kept(charge) + charge.per
        return t
    window = _window_at(charge, t)
    if window is not None and state.counts.get(window, 0.0) <= room + EPSILON:
        return t
    if window == _ms(charge.window[0]) and state.counts.get(_ms(charge.window[1]), 0.0) <= room + EPSILON:
        return charge.window[1]
    return max(t, charge.window[2])


def take(charge: Charge, state: BudgetState, at: float, units: float) -> None:
    """Charge ``units`` (negative: give back) for a request going at ``at``."""
    if charge.kind == BUCKET:
        step = units * interval(charge)
        state.tat = max(state.tat, at) + step if units > 0 else state.tat + step
        return
    slot = math.floor(at / slot_width(charge)) if charge.kind == ROLLING else _window_at(charge, at)
    if slot is None:
        return
    left = state.counts.get(slot, 0.0) + units
    if left > EPSILON:
        state.counts[slot] = left
    else:
        state.counts.pop(slot, None)


def prune(charge: Charge, state: BudgetState, now: float) -> None:
    """Forget counts that can no longer matter."""
    if charge.kind == ROLLING:
        width = slot_width(charge)
        kept = width + max(width, charge.margin, charge.per * MAX_MARGIN)
        gone = [slot for slot in state.counts if slot * width + kept <= now - charge.per]
    elif charge.kind == FIXED:
        current = _window_at(charge, now)
        gone = [start for start in state.counts if current is not None and start < current]
    else:
        return
    for slot in gone:
        del state.counts[slot]


def lasts_until(charge: Charge, state: BudgetState) -> float:
    """When the state stops mattering (the bucket full, every count forgotten, the pause
    over): after that it equals a fresh one, and a copy kept of it may go."""
    until = state.paused
    if charge.kind == BUCKET:
        return max(until, state.tat)
    if not state.counts:
        return until
    latest = max(state.counts)
    if charge.kind == ROLLING:
        width = slot_width(charge)
        # As long as ``prune`` keeps it.
        return max(until, latest * width + width + max(width, charge.margin, charge.per * MAX_MARGIN) + charge.per)
    return max(until, charge.window[2] if latest >= _ms(charge.window[1]) else charge.window[1])


def level(charge: Charge, state: BudgetState, now: float) -> Level:
    if charge.kind == BUCKET:
        debt = max(0.0, state.tat - now)
        remaining, reset = charge.limit - debt / interval(charge), debt
    elif charge.kind == ROLLING:
        live = _live_slots(charge, state, now)
        remaining = charge.limit - sum(state.counts[slot] for slot in live)
        reset = live[0] * slot_width(charge) + _kept(charge) + charge.per - now if live else 0.0
    else:
        window = _window_at(charge, now)
        remaining = charge.limit - (state.counts.get(window, 0.0) if window is not None else 0.0)
        reset = (charge.window[1] if window == _ms(charge.window[0]) else charge.window[2]) - now
    # What this caller may still take: the reserve is not theirs.
    return Level(
        max(0, math.floor(remaining - charge.held + EPSILON)), max(0.0, reset), max(0.0, state.paused - now)
    )


def decide(charges: Sequence[Charge], states: Sequence[BudgetState], now: float, max_wait: float) -> Verdict:
    """Charge every budget, all or none: at the latest time any enforced one allows, if that
    is within ``max_wait``. Shadow charges never hold a request back; they are charged only
    where they would have admitted it."""
    for charge, state in zip(charges, states):
        prune(charge, state, now)
    times = [earliest(charge, state, now) for charge, state in zip(charges, states)]
    exceeded = tuple(t > now + EPSILON for t in times)
    at, blocking = now, -1
    for i, (charge, t) in enumerate(zip(charges, times)):
        if not charge.shadow and t > at + EPSILON:
            at, blocking = t, i
    # A fixed window beyond the next one is not known here: never charged blind.
    admitted = at - now <= max_wait + EPSILON and all(
        charge.kind != FIXED or _window_at(charge, at) is not None for charge in charges
    )
    if admitted:
        for charge, state, t in zip(charges, states, times):
            if not charge.shadow or t <= at + EPSILON:
                take(charge, state, at, charge.cost)
    levels = tuple(level(charge, state, now) for charge, state in zip(charges, states))
    return Verdict(admitted, at - now, blocking, levels, exceeded, at)


@dataclass(frozen=True)
class Adjustment:
    """What the vendor said about one budget: pause it ``pause`` seconds (its Retry-After),
    or lower what is left to its own ``remaining`` (never raise it). With less than one
    request's cost left, nothing goes before the vendor's ``reset`` (seconds). A quota is
    lowered only when the vendor's count lasts as long as ours (or it gives no reset).
    ``spent``: units charged elsewhere that this store never saw, as (time, units): what a
    process's fallback admitted while this store failed."""

    pause: float | None = None
    remaining: float | None = None
    reset: float | None = None
    spent: tuple[tuple[float, float], ...] = ()


def adjust(charge: Charge, state: BudgetState, now: float, said: Adjustment) -> None:
    if said.pause is not None:
        state.paused = max(state.paused, now + said.pause)
    for at, units in said.spent:
        take(charge, state, at, units)
    if said.remaining is None:
        return
    remaining = max(0.0, said.remaining)
    if said.reset is not None and remaining < charge.cost:
        state.paused = max(state.paused, now + max(0.0, said.reset))
        return
    if charge.kind == BUCKET:
        state.tat = max(state.tat, now + (charge.limit - remaining) * interval(charge))
        return
    prune(charge, state, now)
    if charge.kind == ROLLING:
        ours, used = now + charge.per, _rolling_used(charge, state, now)
    else:
        window = _window_at(charge, now)
        ours = charge.window[1] if window == _ms(charge.window[0]) else charge.window[2]
        used = state.counts.get(window, 0.0) if window is not None else 0.0
    if said.reset is not None and now + said.reset < ours - EPSILON:
        return  # the vendor's count ends before ours would: it says nothing of the rest
    if charge.limit - used > remaining:
        take(charge, state, now, charge.limit - used - remaining)


class BudgetBook:
    """Budget states kept inside one process (memory storage, and the fallback when shared
    storage fails), with the operations of the Redis script."""

    def __init__(self) -> None:
        self._states: dict[str, BudgetState] = {}

    def _of(self, vendor: str, charges: Sequence[Charge]) -> list[BudgetState]:
        return [self._states.setdefault(f"{vendor}:{charge.key}", BudgetState()) for charge in charges]

    def state(self, key: str) -> BudgetState | None:
        """A budget's state by its key: the vendor, a colon, the charge's key."""
        return self._states.get(key)

    def put(self, key: str, state: BudgetState) -> None:
        """Start a budget from a state kept before (a restart)."""
        self._states[key] = state

    def charge(self, vendor: str, charges: Sequence[Charge], now: float, max_wait: float) -> Verdict:
        return decide(charges, self._of(vendor, charges), now, max_wait)

    def refund(self, vendor: str, charges: Sequence[Charge], now: float, at: float) -> Verdict:
        states = self._of(vendor, charges)
        for charge, state in zip(charges, states):
            take(charge, state, at, -charge.cost)
        return _report(charges, states, now)

    def adjust(self, vendor: str, charges: Sequence[Charge], now: float, said: Sequence[Adjustment]) -> Verdict:
        states = self._of(vendor, charges)
        for charge, state, what in zip(charges, states, said):
            adjust(charge, state, now, what)
        return _report(charges, states, now)

    def peek(self, vendor: str, charges: Sequence[Charge], now: float) -> Verdict:
        return _report(charges, self._of(vendor, charges), now)


def _report(charges: Sequence[Charge], states: Sequence[BudgetState], now: float) -> Verdict:
    levels = tuple(level(charge, state, now) for charge, state in zip(charges, states))
    return Verdict(False, 0.0, -1, levels, (False,) * len(charges), now)


def fixed_window(now: float, per: float, reset: str | None, timezone: str | None) -> tuple[float, float, float]:
    """The fixed window holding ``now``: (start, end, end of the window after it).

    Windows start at ``reset`` (HH:MM, default midnight) in ``timezone`` (default UTC).
    A ``per`` of whole days counts days from 1970-01-01, so ``per: 1d`` is each local day
    and ``per: 7d`` a week; a shorter ``per`` splits each day from its reset time, the
    last window of a day ending at the next day's reset.
    """
    start, end = _window(now, per, reset, timezone)
    return start, end, _window(end, per, reset, timezone)[1]


def _window(now: float, per: float, reset: str | None, timezone: str | None) -> tuple[float, float]:
    zone = ZoneInfo(timezone or "UTC")
    hours, minutes = (int(part) for part in (reset or "00:00").split(":"))
    at = time(hours, minutes)
    local = datetime.fromtimestamp(now, zone)
    day = local.date() if local.time() >= at else local.date() - timedelta(days=1)

    def moment(d: date) -> float:
        return datetime.combine(d, at, zone).timestamp()

    days = per / 86400
    if days >= 1 and days.is_integer():
        first = day - timedelta(days=(day - date(1970, 1, 1)).days % int(days))
        return moment(first), moment(first + timedelta(days=int(days)))
    anchor, next_anchor = moment(day), moment(day + timedelta(days=1))
    if anchor > now:  # a DST gap put today's reset after now
        anchor, next_anchor = moment(day - timedelta(days=1)), anchor
    start = anchor + math.floor((now - anchor) / per) * per
    return start, min(start + per, next_anchor)
