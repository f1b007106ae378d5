"""Budget arithmetic with a manual clock: one scenario that every storage backend
(tests/backends.py), the Python twin and the Redis script alike, must answer the same way."""

import random
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from gateway.core.budget import (
    BUCKET,
    FIXED,
    ROLLING,
    Adjustment,
    BudgetBook,
    Charge,
    Level,
    fixed_window,
)
from tests.backends import REDIS_LIKE, Clock

T0 = 1_800_000_000.0
BURST = Charge("burst", BUCKET, limit=10, per=10.0, cost=1)  # 1 token a second
BIG = Charge("burst", BUCKET, limit=10, per=10.0, cost=4)
RESERVED = Charge("burst", BUCKET, limit=10, per=10.0, cost=1, held=2)  # a normal caller, 20% reserve
DAILY = Charge("daily", ROLLING, limit=5, per=100.0, cost=1)  # slots of 1 s
WINDOW = (T0 - 10, T0 + 50, T0 + 110)
FIXED_Q = Charge("month", FIXED, limit=3, per=60.0, cost=1, window=WINDOW)
SLOW = Charge("slow", ROLLING, limit=2, per=100.0, cost=1, margin=5.0)  # answers took up to 5 s
SHADOW = Charge("credits", FIXED, limit=2, per=60.0, cost=1, shadow=True, window=WINDOW)
HANDED = Charge("handed", ROLLING, limit=5, per=100.0, cost=1)

# (seconds after T0, op, charges, argument) -> expected (admitted, wait, blocking, levels) for
# charge and peek; levels for refund and adjust. A level is (remaining, reset), and the pause
# left as a third item while paused.
SCENARIO = [
    # A bucket of 10 lets a burst of 10 through, then one a second.
    *[(0.0, "charge", [BURST], 0.0, (True, 0.0, -1, [(9 - i, i + 1.0)])) for i in range(10)],
    (0.0, "charge", [BURST], 0.0, (False, 1.0, 0, [(0, 10.0)])),  # refused: free in 1 s
    (0.0, "charge", [BURST], 5.0, (True, 1.0, 0, [(0, 11.0)])),  # reserved for 1 s from now
    (0.0, "charge", [BURST], 5.0, (True, 2.0, 0, [(0, 12.0)])),  # and the next for 2 s
    (0.0, "refund", [BURST], 2.0, [(0, 11.0)]),  # the second waiter left: its place is free
    (0.0, "charge", [BURST], 5.0, (True, 2.0, 0, [(0, 12.0)])),
    (20.0, "peek", [BURST], 0.0, (False, 0.0, -1, [(10, 0.0)])),
    # Cost 4 takes four tokens; a normal caller cannot dip into the 2 reserved.
    (20.0, "charge", [BIG], 0.0, (True, 0.0, -1, [(6, 4.0)])),
    # (What a normal caller is told is left leaves the reserve out.)
    (20.0, "charge", [RESERVED], 0.0, (True, 0.0, -1, [(3, 5.0)])),
    (20.0, "charge", [RESERVED], 0.0, (True, 0.0, -1, [(2, 6.0)])),
    (20.0, "charge", [RESERVED], 0.0, (True, 0.0, -1, [(1, 7.0)])),
    (20.0, "charge", [RESERVED], 0.0, (True, 0.0, -1, [(0, 8.0)])),
    (20.0, "charge", [RESERVED], 0.0, (False, 1.0, 0, [(0, 8.0)])),
    (20.0, "charge", [BURST], 0.0, (True, 0.0, -1, [(1, 9.0)])),  # a high caller still can
    # A rolling quota of 5 per 100 s: never more than 5 in any 100 s.
    *[(30.0 + i, "charge", [DAILY], 0.0, (True, 0.0, -1, [(4 - i, 102.0 - i)])) for i in range(5)],
    # The slot of 30 s counts until 132: its end, plus a slot of margin, plus 100 s.
    (60.0, "charge", [DAILY], 0.0, (False, 72.0, 0, [(0, 72.0)])),
    (132.0, "charge", [DAILY], 0.0, (True, 0.0, -1, [(0, 1.0)])),
    (132.5, "charge", [DAILY], 0.0, (False, 0.5, 0, [(0, 0.5)])),
    # All or none: the bucket has room, the quota has none: neither is charged.
    (132.5, "charge", [BURST, DAILY], 0.0, (False, 0.5, 1, [(10, 0.0), (0, 0.5)])),
    (133.0, "charge", [BURST, DAILY], 0.0, (True, 0.0, -1, [(9, 1.0), (0, 1.0)])),
    # A fixed quota of 3 in windows [T0-10, T0+50), [T0+50, T0+110): wait for the next one.
    (0.0, "charge", [FIXED_Q], 0.0, (True, 0.0, -1, [(2, 50.0)])),
    (0.0, "charge", [FIXED_Q], 0.0, (True, 0.0, -1, [(1, 50.0)])),
    (1.0, "charge", [FIXED_Q], 0.0, (True, 0.0, -1, [(0, 49.0)])),
    (2.0, "charge", [FIXED_Q], 0.0, (False, 48.0, 0, [(0, 48.0)])),
    (2.0, "charge", [FIXED_Q], 60.0, (True, 48.0, 0, [(0, 48.0)])),  # booked in the next window
    (50.0, "peek", [FIXED_Q], 0.0, (False, 0.0, -1, [(2, 60.0)])),
    # A shadow quota never refuses; it counts only what it would have admitted.
    (3.0, "charge", [SHADOW], 0.0, (True, 0.0, -1, [(1, 47.0)])),
    (3.0, "charge", [SHADOW], 0.0, (True, 0.0, -1, [(0, 47.0)])),
    (3.0, "charge", [SHADOW], 0.0, (True, 0.0, -1, [(0, 47.0)])),
    # The vendor's 429 with Retry-After: 7 pauses the bucket (spending none of it: it is all
    # there when the pause ends); its counters lower ours.
    (200.0, "adjust", [BURST], Adjustment(pause=7.0), [(10, 0.0, 7.0)]),
    (203.0, "charge", [BURST], 0.0, (False, 4.0, 0, [(10, 0.0, 4.0)])),
    (207.0, "charge", [BURST], 0.0, (True, 0.0, -1, [(9, 1.0)])),
    (207.0, "adjust", [BURST], Adjustment(remaining=3.0), [(3, 7.0)]),
    (207.0, "adjust", [BURST], Adjustment(remaining=8.0), [(3, 7.0)]),  # never raised
    (207.0, "adjust", [BURST], Adjustment(remaining=0.0, reset=30.0), [(3, 7.0, 30.0)]),
    (207.0, "adjust", [DAILY], Adjustment(remaining=1.0), [(1, 27.0)]),
    (237.0, "peek", [BURST], 0.0, (False, 0.0, -1, [(10, 0.0)])),
    # What a fallback admitted while storage failed is handed over and counts where it was spent.
    (800.0, "adjust", [HANDED], Adjustment(spent=((T0 + 795.0, 2.0), (T0 + 799.5, 1.0))), [(2, 97.0)]),
    (800.0, "charge", [HANDED], 0.0, (True, 0.0, -1, [(1, 97.0)])),
    (800.0, "adjust", [HANDED, BURST], Adjustment(pause=3.0, spent=((T0 + 799.0, 2.0),)), [(0, 97.0, 3.0), (9, 1.0, 3.0)]),  # 2 at 799: one refilled by 800
    (801.0, "charge", [HANDED], 5.0, (False, 96.0, 0, [(0, 96.0, 2.0)])),
    # With a margin of 5 s, a count of a slot outlasts the window by 5 s, not one slot.
    (700.0, "charge", [SLOW], 0.0, (True, 0.0, -1, [(1, 106.0)])),
    (700.5, "charge", [SLOW], 0.0, (True, 0.0, -1, [(0, 105.5)])),
    (701.0, "charge", [SLOW], 0.0, (False, 105.0, 0, [(0, 105.0)])),
]


def _shape(verdict, op):
    levels = [
        (lv.remaining, round(lv.reset, 6), *((round(lv.paused_for, 6),) if lv.paused_for else ()))
        for lv in verdict.levels
    ]
    if op in ("refund", "adjust"):
        return levels
    return (verdict.admitted, round(verdict.wait, 6), verdict.blocking, levels)


async def run(storage, clock):
    results = []
    for t, op, charges, argument, _ in SCENARIO:
        clock.now = T0 + t
        if op == "charge":
            verdict = await storage.charge_budgets("v", charges, argument)
        elif op == "refund":
            await storage.refund_budgets("v", charges, T0 + argument)
            verdict = await storage.peek_budgets("v", charges)
        elif op == "adjust":
            verdict = await storage.adjust_budgets("v", charges, [argument] * len(charges))
        else:
            verdict = await storage.peek_budgets("v", charges)
        results.append(_shape(verdict, op))
    return results


def expected():
    return [e if isinstance(e, list) else (e[0], e[1], e[2], e[3]) for *_, e in SCENARIO]


async def test_every_backend_admits_waits_refunds_pauses_and_follows(backend):
    """The same answers from the Python twin (memory) and the script (every Redis)."""
    clock = Clock()
    assert await run(backend.open(clock), clock) == expected()


@pytest.mark.parametrize("backend", REDIS_LIKE, indirect=True)
async def test_redis_keeps_a_quota_while_its_counts_still_count(backend):
    storage = backend.open(Clock(T0))
    quota = Charge("q", ROLLING, limit=5, per=100.0, cost=1)
    for _ in range(5):
        await storage.charge_budgets("v", [quota], 0.0)
    booked = await storage.charge_budgets("v", [quota], 300.0)
    assert booked.admitted and round(booked.wait) == 102  # 100 s, its slot and one more
    # The booking counts until about 102 + 102 s: the key must outlive that.
    assert await storage.client.pttl("gateway:{v}:budget:q") > 204_000


def _sends(charge, arrivals, max_wait):
    """Offer requests at the given times; the times they are sent (admitted at once or after a wait)."""
    book = BudgetBook()
    sent = []
    for now in arrivals:
        verdict = book.charge("v", [charge], now, max_wait)
        if verdict.admitted:
            sent.append(verdict.at)
    return sorted(sent)


@pytest.mark.parametrize("max_wait", [0.0, 3.0])
def test_a_bucket_never_sends_more_than_it_promises(max_wait):
    charge = Charge("b", BUCKET, limit=20, per=4.0, cost=1)
    rng = random.Random(7)
    arrivals = sorted(T0 + rng.uniform(0, 60) for _ in range(3000))
    sent = _sends(charge, arrivals, max_wait)
    for i, start in enumerate(sent):
        for span in (0.5, 4.0, 10.0):
            inside = sum(1 for t in sent[i:] if t < start + span + 1e-9)
            assert inside <= 20 + 20 * span / 4.0 + 1e-6
    assert len(sent) >= 20 + 20 * (sent[-1] - T0) / 4.0 - 2  # and it keeps that promise


@pytest.mark.parametrize("max_wait", [0.0, 30.0])
def test_a_rolling_quota_is_never_exceeded_in_any_window(max_wait):
    charge = Charge("q", ROLLING, limit=50, per=10.0, cost=1)
    rng = random.Random(3)
    arrivals = sorted(T0 + rng.uniform(0, 60) for _ in range(2000))
    sent = _sends(charge, arrivals, max_wait)
    most = max(sum(1 for t in sent[i:] if t < start + 10.0) for i, start in enumerate(sent))
    assert most == 50
    assert len(sent) >= 50 * 6 * 0.96


def test_fixed_windows_start_at_the_reset_time_in_the_timezone():
    berlin = ZoneInfo("Europe/Berlin")
    now = datetime(2026, 11, 23, 7, 30, tzinfo=berlin).timestamp()
    start, end, after = fixed_window(now, 86400, "08:00", "Europe/Berlin")
    assert datetime.fromtimestamp(start, berlin) == datetime(2026, 11, 22, 8, 0, tzinfo=berlin)
    assert datetime.fromtimestamp(end, berlin) == datetime(2026, 11, 23, 8, 0, tzinfo=berlin)
    assert after - end == 86400
    hourly = fixed_window(now, 3600, "00:15", None)
    assert hourly[0] == datetime(2026, 11, 23, 6, 15, tzinfo=ZoneInfo("UTC")).timestamp()
    assert hourly[1] - hourly[0] == 3600


def test_a_day_window_across_a_dst_change_is_23_hours():
    berlin = ZoneInfo("Europe/Berlin")
    now = datetime(2026, 3, 29, 12, 0, tzinfo=berlin).timestamp()
    start, end, _ = fixed_window(now, 86400, None, "Europe/Berlin")
    assert end - start == 23 * 3600


def test_a_paused_budget_keeps_what_is_left_and_says_how_long_the_pause_lasts():
    book = BudgetBook()
    book.charge("v", [BURST], T0, 0.0)
    book.adjust("v", [BURST], T0, [Adjustment(pause=5.0)])
    assert book.peek("v", [BURST], T0 + 0.5).levels == (Level(9, 0.5, 4.5),)
    assert not book.charge("v", [BURST], T0 + 1, 0.0).admitted
    assert book.peek("v", [BURST], T0 + 5).levels == (Level(10, 0.0),)
