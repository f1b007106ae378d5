"""The breaker's state machine: one scenario that every storage backend (tests/backends.py),
the Python twin and the Redis script alike, must answer the same way."""

from gateway.config.model import CircuitBreaker
from gateway.core.breaker import CLOSED, HALF_OPEN, OPEN, BreakerState
from tests.backends import Clock

CONFIG = CircuitBreaker(failure_ratio=0.5, window=10.0, min_calls=4, open_for=5.0)

# (time, operation, failure, probe) -> expected (allowed, probe, retry_after, state) for admit,
# or state for record.
SCENARIO = [
    (100.0, "record", True, False, CLOSED),  # 1 call: below min_calls
    (100.5, "record", True, False, CLOSED),
    (101.0, "record", False, False, CLOSED),
    (101.5, "admit", None, None, (True, False, 0.0, CLOSED)),
    (102.0, "record", True, False, OPEN),  # 3 of 4 failed: open until 107
    (103.0, "admit", None, None, (False, False, 4.0, OPEN)),
    (107.0, "admit", None, None, (True, True, 0.0, HALF_OPEN)),  # the one probe
    (107.5, "admit", None, None, (False, False, 4.5, HALF_OPEN)),  # no second probe
    (108.0, "record", True, True, OPEN),  # probe failed: open until 113
    (112.0, "admit", None, None, (False, False, 1.0, OPEN)),
    (113.0, "admit", None, None, (True, True, 0.0, HALF_OPEN)),
    (113.2, "record", False, True, CLOSED),  # probe succeeded: closed, window cleared
    (113.4, "record", True, False, CLOSED),
    (113.6, "admit", None, None, (True, False, 0.0, CLOSED)),
    (140.0, "record", True, False, CLOSED),  # old failures slid out of the window
    (140.1, "record", True, False, CLOSED),
    (140.2, "record", False, False, CLOSED),
    (140.3, "record", False, False, OPEN),  # 2 of 4: ratio 0.5 reached
]


async def run(storage, clock):
    results = []
    for now, op, failure, probe, _ in SCENARIO:
        clock.now = now
        if op == "admit":
            a = await storage.breaker_admit("v", CONFIG)
            results.append((a.allowed, a.probe, round(a.retry_after, 6), a.state))
        else:
            results.append(await storage.breaker_record("v", CONFIG, failure, probe))
    return results


def expected():
    return [e for *_, e in SCENARIO]


async def test_every_backend_opens_probes_once_and_closes(backend):
    """The same answers from the Python twin (memory) and the script (every Redis)."""
    clock = Clock()
    assert await run(backend.open(clock), clock) == expected()


def test_a_probe_that_never_answers_frees_its_place_after_open_for():
    state = BreakerState()
    for t in range(4):
        state.record(CONFIG, 100 + t * 0.1, True, False)
    assert state.admit(CONFIG, 106).probe
    assert not state.admit(CONFIG, 110).allowed
    assert state.admit(CONFIG, 111).probe
