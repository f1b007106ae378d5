"""What each concern keeps in storage, one small protocol per concern.

Every backend (memory with the local SQLite store, Redis, Redis Cluster) implements them
all, as ``Storage``, and turns its own failures (redis, sqlite3, OSError) into
StorageError. Budgets, breakers and auth stops, which have an in-process fallback, read the backend's
``health``: it alone decides when storage counts as failing and when as answering again.
The stats store keeps per-vendor answer counts that every process adds to. A queue store
(async delivery, webhook ingress) will be one more protocol here.

tests/test_stores.py holds one contract test table for these stores, run on every backend
of tests/backends.py (memory, fakeredis, redis-server, Redis Cluster); the breaker, auth
stop and budget scenarios of tests/core run on the same table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from gateway.config.model import CircuitBreaker
from gateway.config.vendor_signals import AuthFailures
from gateway.core.auth_stop import Admission as AuthAdmission, Standing
from gateway.core.breaker import Admission
from gateway.core.budget import Adjustment, Charge, Verdict
from gateway.core.dead_letter import DeadLetter
from gateway.storage.health import StorageHealth


class TokenStore(Protocol):
    """Sealed token records and the lock that lets one process refresh at a time."""

    name: str

    async def lock_refresh(self, vendor: str, ttl: float) -> int | None:
        """Take the vendor's token-refresh lock for ``ttl`` seconds: its fence, or None if held."""

    async def unlock_refresh(self, vendor: str, fence: int) -> None: ...

    async def get_token(self, vendor: str) -> bytes | None: ...

    async def put_token(self, vendor: str, value: bytes, previous: bytes | None) -> bool:
        """Store the vendor's sealed token record if the stored one is still ``previous``."""


class BreakerStore(Protocol):
    """Each vendor's circuit breaker, shared by every process."""

    health: StorageHealth

    async def breaker_state(self, vendor: str, config: CircuitBreaker) -> int: ...

    async def breaker_admit(self, vendor: str, config: CircuitBreaker) -> Admission: ...

    async def breaker_record(self, vendor: str, config: CircuitBreaker, failure: bool, probe: bool) -> int:
        """Count an attempt's outcome; the breaker's state after it."""


class AuthStopStore(Protocol):
    """Each vendor's auth stop (gateway.core.auth_stop), shared by every process."""

    health: StorageHealth

    async def auth_stop_peek(self, vendor: str) -> Standing: ...

    async def auth_stop_admit(self, vendor: str) -> AuthAdmission:
        """Whether a request may go to the vendor; while stopped, only as the probe."""

    async def auth_stop_record(self, vendor: str, config: AuthFailures, refused: bool, probe: bool) -> int:
        """Count one final answer of the vendor; the state after it."""

    async def auth_stop_unanswered(self, vendor: str, probe: bool) -> int:
        """An attempt that got no answer (a probe's place is freed); the state after it."""

    async def auth_stop_clear(self, vendor: str) -> None:
        """The vendor's credentials changed: the stop ends."""


class BudgetStore(Protocol):
    """Budget levels, charged all or none (one round trip)."""

    health: StorageHealth

    async def charge_budgets(self, vendor: str, charges: Sequence[Charge], max_wait: float) -> Verdict:
        """Charge all the budgets or none: now, or at the time given by ``Verdict.wait`` when
        that is within ``max_wait`` seconds (a reservation)."""

    async def refund_budgets(self, vendor: str, charges: Sequence[Charge], at: float) -> None:
        """Give back a reservation for ``at`` (Verdict.at) that will not be used."""

    async def adjust_budgets(self, vendor: str, charges: Sequence[Charge], said: Sequence[Adjustment]) -> Verdict:
        """Apply what the vendor said (Retry-After, its own counters) to each budget."""

    async def peek_budgets(self, vendor: str, charges: Sequence[Charge]) -> Verdict: ...


class CacheStore(Protocol):
    """Stored answers, the generations that outdate them, and the fetch lock."""

    async def cache_get(self, key: str, vendor: str, generations: Sequence[str]) -> tuple[bytes | None, list[int]]:
        """A stored answer, if any, and the current values of the vendor's named
        generations (0 for one never bumped or forgotten), read together."""

    async def cache_invalidate(self, vendor: str, bumps: Mapping[str, float]) -> None:
        """Bump each named generation of the vendor (gateway.core.cache.next_generation),
        keeping it at least the given seconds."""

    async def cache_put(self, key: str, blob: bytes, seconds: float) -> None:
        """Keep a stored answer for ``seconds``."""

    async def cache_lock(self, key: str, seconds: float) -> str | None:
        """Become the one process fetching this answer for up to ``seconds``: a token to
        unlock with, or None while another process is."""

    async def cache_unlock(self, key: str, token: str) -> None:
        """Release the lock if it is still the one ``token`` took."""


class DeadLetterStore(Protocol):
    """Dead letters, kept until replayed or deleted."""

    async def put_dead_letter(self, entry: DeadLetter) -> None: ...

    async def get_dead_letter(self, entry_id: str) -> DeadLetter | None: ...

    async def update_dead_letter(self, entry: DeadLetter) -> bool:
        """Replace an entry that still exists (one deleted meanwhile stays deleted)."""

    async def claim_dead_letter(self, entry_id: str, seconds: float) -> bool:
        """Mark an entry as being replayed; False if another replay holds it."""

    async def release_dead_letter(self, entry_id: str) -> None: ...

    async def delete_dead_letter(self, entry_id: str) -> bool: ...

    async def list_dead_letters(self, vendor: str | None, after: str, limit: int) -> list[DeadLetter]:
        """Oldest first, ids greater than ``after``."""

    async def count_dead_letters(self, vendor: str) -> int: ...


class NoticeStore(Protocol):
    """Which process sends a notification."""

    async def claim_notice(self, name: str, seconds: float) -> bool:
        """True for the one caller that may send notice ``name`` within ``seconds``."""


# Per vendor: the counters summed over each span of minutes asked for, and the vendor's
# latest success (epoch seconds), if one is kept.
StatsRead = dict[str, tuple[list[dict[str, int]], float | None]]


class StatsStore(Protocol):
    """Per-vendor answer counters per minute (gateway.core.stats), which every process adds
    to, kept 25 h (``KEEP``)."""

    async def add_stats(self, minutes: Mapping[tuple[str, int], Mapping[str, int]],
                        successes: Mapping[str, float]) -> None:
        """Add each (vendor, minute)'s counters, and raise each vendor's latest success to
        the time given if it is later, in one round trip."""

    async def read_stats(self, vendors: Sequence[str], spans: Sequence[tuple[int, int]]) -> StatsRead:
        """Each vendor's counters summed over each span (first and last minute), in one round trip."""


class Storage(
    TokenStore, BreakerStore, AuthStopStore, BudgetStore, CacheStore, DeadLetterStore, NoticeStore, StatsStore,
    Protocol,
):
    """A backend: every store, its health, and its lifecycle."""

    name: str
    health: StorageHealth

    async def ping(self) -> None:
        """Returns when the backend answers; raises StorageError otherwise."""

    async def close(self) -> None: ...
