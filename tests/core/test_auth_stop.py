"""The auth stop's state machine: one scenario that every storage backend (tests/backends.py),
the Python twin and the Redis script alike, must answer the same way."""

import pytest

from gateway.config.vendor_signals import AuthFailures
from gateway.core.auth_stop import COUNTING, OK, REJECTED, AuthStopState, Standing
from gateway.storage.redis import RedisStorage, key
from tests.backends import Clock

CONFIG = AuthFailures(statuses=frozenset({401}), after=3, probe_every=30.0)

# (time, operation, refused, probe) -> expected: (allowed, probe, retry_after, state) for
# admit, (state, probing, retry_after) for peek, the state for the others.
SCENARIO = [
    (100.0, "admit", None, None, (True, False, 0.0, OK)),
    (100.1, "record", True, False, COUNTING),
    (100.2, "record", False, False, OK),  # any other answer: the count starts again
    (101.0, "record", True, False, COUNTING),
    (102.0, "record", True, False, COUNTING),
    (102.5, "admit", None, None, (True, False, 0.0, COUNTING)),
    (103.0, "record", True, False, REJECTED),  # the third in a row: stopped, a probe at 133
    (104.0, "admit", None, None, (False, False, 29.0, REJECTED)),
    (104.0, "peek", None, None, (REJECTED, False, 29.0)),
    (104.5, "record", True, False, REJECTED),  # sent before the stop: changes nothing
    (133.0, "admit", None, None, (True, True, 0.0, REJECTED)),  # the probe
    (133.5, "admit", None, None, (False, False, 29.5, REJECTED)),  # one probe at a time
    (133.5, "peek", None, None, (REJECTED, True, 29.5)),
    (134.0, "record", True, True, REJECTED),  # refused: the next probe after 60 s
    (150.0, "admit", None, None, (False, False, 44.0, REJECTED)),
    (194.0, "admit", None, None, (True, True, 0.0, REJECTED)),
    (195.0, "unanswered", None, True, REJECTED),  # no answer: the same 60 s again
    (255.0, "admit", None, None, (True, True, 0.0, REJECTED)),
    (256.0, "record", True, True, REJECTED),  # 120 s
    (376.0, "admit", None, None, (True, True, 0.0, REJECTED)),
    (377.0, "record", True, True, REJECTED),  # 240 s
    (617.0, "admit", None, None, (True, True, 0.0, REJECTED)),
    (618.0, "record", True, True, REJECTED),  # 480 s
    (1098.0, "admit", None, None, (True, True, 0.0, REJECTED)),
    (1099.0, "record", True, True, REJECTED),  # 960 s is more than 10 min: 600 s
    (1600.0, "admit", None, None, (False, False, 99.0, REJECTED)),
    (1699.0, "admit", None, None, (True, True, 0.0, REJECTED)),
    (1700.0, "record", False, True, OK),  # the probe went through: the stop ends
    (1700.5, "admit", None, None, (True, False, 0.0, OK)),
    (1700.5, "peek", None, None, (OK, False, 0.0)),
    (1800.0, "record", True, False, COUNTING),
    (1801.0, "record", True, False, COUNTING),
    (1802.0, "record", True, False, REJECTED),
    (1803.0, "credentials_changed", None, None, OK),  # a reload with new credentials
    (1803.5, "admit", None, None, (True, False, 0.0, OK)),
]


def expected():
    return [e for *_, e in SCENARIO]


async def run(storage, clock):
    results = []
    for now, op, refused, probe, _ in SCENARIO:
        clock.now = now
        if op == "admit":
            a = await storage.auth_stop_admit("v")
            results.append((a.allowed, a.probe, round(a.retry_after, 6), a.state))
        elif op == "peek":
            s = await storage.auth_stop_peek("v")
            results.append((s.state, s.probing, round(s.retry_after, 6)))
        elif op == "record":
            results.append(await storage.auth_stop_record("v", CONFIG, refused, probe))
        elif op == "unanswered":
            results.append(await storage.auth_stop_unanswered("v", probe))
        else:
            await storage.auth_stop_clear("v")
            results.append((await storage.auth_stop_peek("v")).state)
    return results


async def test_refusals_stop_the_calls_and_probes_space_out_until_one_goes_through(backend):
    """The same answers from the Python twin (memory) and the script (every Redis)."""
    clock = Clock()
    storage = backend.open(clock)
    assert await run(storage, clock) == expected()
    if isinstance(storage, RedisStorage):
        assert await storage.client.exists(key("v", "auth_stop")) == 0  # ok: nothing kept


def test_a_probe_whose_answer_never_comes_frees_its_place_after_the_interval():
    state = AuthStopState()
    for t in range(3):
        state.record(CONFIG, 100 + t, True, False)
    assert state.admit(132).probe
    assert not state.admit(161).allowed
    assert state.admit(162).probe


def test_an_answer_sent_before_the_stop_that_went_through_ends_it():
    state = AuthStopState()
    for t in range(3):
        state.record(CONFIG, 100 + t, True, False)
    assert state.record(CONFIG, 103, False, False) == OK
    assert state.admit(104).allowed


def test_one_refusal_is_enough_with_after_1():
    state = AuthStopState()
    assert state.record(AuthFailures(frozenset({401, 403}), 1, 5.0), 10, True, False) == REJECTED
    assert state.admit(12).retry_after == 3


def test_the_state_survives_a_restart_but_a_probe_out_does_not():
    state = AuthStopState()
    for t in range(3):
        state.record(CONFIG, 100 + t, True, False)
    state.record(CONFIG, 133, True, state.admit(132).probe)  # interval 60 from 133
    state.admit(193)  # a probe out when the process stops
    copy = AuthStopState.from_record(state.to_record())
    assert copy.peek(194) == Standing(REJECTED, False, 0.0)
    assert copy.admit(194).probe
    copy.record(CONFIG, 195, True, True)
    assert copy.admit(196).retry_after == 119  # the doubling carried on: 120 s
    counting = AuthStopState()
    counting.record(CONFIG, 1, True, False)
    assert AuthStopState.from_record(counting.to_record()).state() == COUNTING
    assert AuthStopState().lasts_until() == 0 and counting.lasts_until() == float("inf")


@pytest.mark.parametrize("record", [
    None, [], {"refusals": -1, "next_probe": 0, "interval": 0}, {"refusals": True, "next_probe": 0, "interval": 0},
    {"refusals": 3, "next_probe": float("nan"), "interval": 30}, {"refusals": 3, "next_probe": 10, "interval": 0},
    {"refusals": 3, "next_probe": 10, "interval": 6000}, {"refusals": 3, "next_probe": "10", "interval": 30},
    {"refusals": 3},
])
def test_a_damaged_record_is_refused(record):
    with pytest.raises(ValueError):
        AuthStopState.from_record(record)
