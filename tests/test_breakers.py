"""The breaker driver (gateway.breakers) over a breaker store that fails: while storage
fails each process decides with a breaker of its own, starting from what storage last
showed; once storage answers again it decides again, and the next outage starts afresh."""

from __future__ import annotations

from gateway.breakers import CircuitBreakers
from gateway.config.model import CircuitBreaker
from gateway.core.breaker import Admission, BreakerState
from gateway.errors import StorageError
from gateway.metrics import Metrics
from gateway.storage.health import RETRY, StorageHealth

# Two failures open it, for an hour: nothing here waits for it to close by itself.
CONFIG = CircuitBreaker(failure_ratio=0.5, window=300.0, min_calls=2, open_for=3600.0)


class FailingStore:
    """A breaker store that fails while ``failing`` is set, as a Redis that went away;
    ``asked`` counts the calls that reached it."""

    def __init__(self) -> None:
        self.now = 0.0  # the health's clock
        self.health = StorageHealth("fake", clock=lambda: self.now)
        self.failing = False
        self.asked = 0
        self._breakers: dict[str, BreakerState] = {}
        self._time = 1000.0

    def _breaker(self, vendor: str) -> BreakerState:
        with self.health.attempt():
            self.asked += 1
            if self.failing:
                raise StorageError("fake storage does not answer")
        return self._breakers.setdefault(vendor, BreakerState())

    async def breaker_state(self, vendor: str, config: CircuitBreaker) -> int:
        return self._breaker(vendor).state(self._time)

    async def breaker_admit(self, vendor: str, config: CircuitBreaker) -> Admission:
        return self._breaker(vendor).admit(config, self._time)

    async def breaker_record(self, vendor: str, config: CircuitBreaker, failure: bool, probe: bool) -> int:
        return self._breaker(vendor).record(config, self._time, failure, probe)


async def test_a_breaker_open_in_storage_stays_open_while_storage_fails():
    store = FailingStore()
    breakers = CircuitBreakers(store, Metrics())
    for _ in range(2):
        await breakers.record("crm", CONFIG, failure=True, probe=False)
    assert await breakers.state("crm", CONFIG) == "open"
    store.failing = True
    admission = await breakers.admit("crm", CONFIG)
    assert not admission.allowed and admission.retry_after > 3000
    assert await breakers.state("crm", CONFIG) == "open"


async def test_while_storage_fails_the_process_decides_alone_then_storage_decides_again():
    store = FailingStore()
    store.failing = True
    breakers = CircuitBreakers(store, Metrics())
    assert (await breakers.admit("crm", CONFIG)).allowed  # nothing known: closed
    for _ in range(2):
        await breakers.record("crm", CONFIG, failure=True, probe=False)
    assert not (await breakers.admit("crm", CONFIG)).allowed  # opened in this process
    assert store.asked == 1  # one failed call, then no round trip per request

    store.failing, store.now = False, store.now + RETRY  # storage is back; its probe is due
    assert (await breakers.admit("crm", CONFIG)).allowed  # storage's breaker never opened
    assert not store.health.failing and store.asked == 2
    assert await breakers.state("crm", CONFIG) == "closed" and store.asked == 3

    # The next outage starts afresh from what storage showed, not from the last one's breaker.
    store.failing = True
    assert (await breakers.admit("crm", CONFIG)).allowed
