"""The table of storage backends every store is tested against (as limits' ALL_STORAGES):
memory with its local store (the Python twin of the scripts), fakeredis (the same scripts,
run by lupa), a real redis-server and a Redis Cluster of three nodes.

A backend is added here, in BACKENDS and ``Backend.open``; the contract tests
(tests/test_stores.py) and the Lua/Python parity tables (tests/core/test_budget.py,
test_breaker.py, test_auth_stop.py) then run on it. The servers are started once per
session and emptied before each test.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.storage import Storage
from gateway.storage.memory import MemoryStorage
from gateway.storage.redis import RedisStorage

BACKENDS = ["memory", "fakeredis", "redis", "cluster"]
REDIS_LIKE = BACKENDS[1:]  # RedisStorage: the Lua scripts


class Clock:
    """The time a test sets, for every backend to count with."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Backend:
    """One backend of the table for one test: the stores it opens share its data."""

    def __init__(self, name: str, folder: Path, server: Any = None) -> None:
        self.name = name
        self._folder = folder
        self._server = server  # a fakeredis.FakeServer, RedisServer or RedisClusterNodes
        self._opened: list[Storage] = []

    def open(self, clock: Callable[[], float] | None = None) -> Storage:
        """A store of this backend; with ``clock``, one that counts with that time
        instead of its own (the breaker, auth stop and budget steps)."""
        store: Storage
        if self.name == "memory":
            store = MemoryStorage(self._folder / "data", clock=clock or time.time)
        elif self.name == "fakeredis":
            import fakeredis

            store = RedisStorage(fakeredis.FakeAsyncRedis(server=self._server), clock=clock)
        else:  # as the gateway opens it
            store = RedisStorage.from_url(self._server.url, cluster=self.name == "cluster", clock=clock)
        self._opened.append(store)
        return store

    async def close(self) -> None:
        for store in self._opened:
            await store.close()
