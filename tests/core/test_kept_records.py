"""Budget and breaker states as the embedded mode keeps them across a restart: read back
as they were, until when they matter, and nothing read back from a record that is not one."""

import math

import orjson
import pytest

from gateway.config.model import CircuitBreaker
from gateway.core.breaker import HALF_OPEN, OPEN, BreakerState
from gateway.core.budget import (
    BUCKET,
    FIXED,
    ROLLING,
    Adjustment,
    BudgetBook,
    BudgetState,
    Charge,
    lasts_until,
    take,
)

T0 = 1_800_000_000.0
BURST = Charge("burst", BUCKET, limit=10, per=10.0, cost=1)
HOURLY = Charge("hourly", ROLLING, limit=5, per=3600.0, cost=1)
DAILY = Charge("daily", FIXED, limit=3, per=86400.0, cost=1, window=(T0 - 100, T0 + 500, T0 + 86900))
BREAKER = CircuitBreaker(failure_ratio=0.5, window=10.0, min_calls=2, open_for=600.0)


def through_json(record: object) -> object:
    return orjson.loads(orjson.dumps(record))


@pytest.mark.parametrize("charge", [BURST, HOURLY, DAILY], ids=lambda c: c.kind)
def test_a_spent_budget_read_back_is_still_spent(charge):
    book = BudgetBook()
    for _ in range(int(charge.limit)):
        assert book.charge("v", [charge], T0, 0.0).admitted
    assert not book.charge("v", [charge], T0 + 0.5, 0.0).admitted
    key = f"v:{charge.key}"

    after_restart = BudgetBook()
    after_restart.put(key, BudgetState.from_record(through_json(book.state(key).to_record())))
    refused = after_restart.charge("v", [charge], T0 + 0.5, 0.0)
    assert not refused.admitted and refused.levels[0].remaining == 0


def test_a_pause_read_back_still_holds():
    book = BudgetBook()
    book.adjust("v", [BURST], T0, [Adjustment(pause=600.0)])
    record = through_json(book.state("v:burst").to_record())
    after_restart = BudgetBook()
    after_restart.put("v:burst", BudgetState.from_record(record))
    refused = after_restart.charge("v", [BURST], T0 + 300, 0.0)
    assert not refused.admitted and math.isclose(refused.wait, 300.0)


def test_a_budget_state_matters_until_it_is_like_a_fresh_one():
    bucket = BudgetState()
    take(BURST, bucket, T0, 3)
    assert lasts_until(BURST, bucket) == pytest.approx(T0 + 3.0)  # refilled 3 s later

    quota = BudgetState()
    take(HOURLY, quota, T0, 1)
    until = lasts_until(HOURLY, quota)
    assert T0 + 3600 < until <= T0 + 3600 + 36 + 360 + 1  # the window, its slot and the longest margin
    assert lasts_until(HOURLY, BudgetState()) == 0.0

    fixed = BudgetState()
    take(DAILY, fixed, T0, 1)
    assert lasts_until(DAILY, fixed) == T0 + 500  # the end of its window
    paused = BudgetState(paused=T0 + 60)
    assert lasts_until(DAILY, paused) == T0 + 60


def test_an_open_breaker_read_back_is_still_open_and_then_probes():
    state = BreakerState()
    state.record(BREAKER, T0, True, False)
    assert state.record(BREAKER, T0 + 1, True, False) == OPEN
    assert state.lasts_until(BREAKER) == math.inf  # open or half-open: kept until it closes

    after_restart = BreakerState.from_record(through_json(state.to_record()))
    refused = after_restart.admit(BREAKER, T0 + 300)
    assert not refused.allowed and refused.state == OPEN and refused.retry_after == pytest.approx(301.0)
    probe = after_restart.admit(BREAKER, T0 + 602)
    assert probe.allowed and probe.probe and probe.state == HALF_OPEN


def test_a_probe_out_when_the_process_stopped_does_not_hold_the_next_one_back():
    state = BreakerState(opened_until=T0)
    assert state.admit(BREAKER, T0 + 1).probe
    after_restart = BreakerState.from_record(through_json(state.to_record()))
    assert after_restart.admit(BREAKER, T0 + 2).probe


def test_a_closed_breaker_matters_while_its_outcomes_are_in_the_window():
    state = BreakerState()
    state.record(BREAKER, T0, True, False)
    assert T0 + 10 <= state.lasts_until(BREAKER) <= T0 + 11
    assert BreakerState().lasts_until(BREAKER) == 0.0


@pytest.mark.parametrize("record", [
    None, [], "tat", {"tat": 1.0}, {"tat": "1", "paused": 0, "counts": []},
    {"tat": 1.0, "paused": True, "counts": []}, {"tat": 1.0, "paused": 0.0, "counts": [[1.5, 2]]},
    {"tat": 1.0, "paused": 0.0, "counts": [[1]]}, {"tat": 1.0, "paused": 0.0, "counts": {"1": 2}},
    {"tat": 1.0, "paused": 0.0, "counts": [[1, "2"]]},
])
def test_a_budget_record_that_is_not_one_is_refused(record):
    with pytest.raises(ValueError):
        BudgetState.from_record(record)


@pytest.mark.parametrize("record", [
    None, {"opened_until": 1.0}, {"opened_until": "soon", "buckets": []}, {"opened_until": 0, "buckets": [[1, 2]]},
    {"opened_until": 0, "buckets": [[1, 2, 3.5]]}, {"opened_until": 0, "buckets": [[1, True, 3]]},
])
def test_a_breaker_record_that_is_not_one_is_refused(record):
    with pytest.raises(ValueError):
        BreakerState.from_record(record)
