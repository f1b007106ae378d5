"""Shared state backends, chosen once from the storage URL.

``memory`` keeps state inside the process (and what must survive a restart in the local
store under ``data_dir``); ``redis://`` and ``rediss://`` share it among every gateway
process using that Redis. What each concern keeps is a protocol of its own
(gateway.storage.stores); backend failures surface as StorageError; each backend's
``health`` tells the users that have a fallback whether it answers.
"""

from __future__ import annotations

from pathlib import Path

from gateway.storage.memory import MemoryStorage
from gateway.storage.redis import RedisStorage
from gateway.storage.stores import (
    AuthStopStore as AuthStopStore,
    BreakerStore as BreakerStore,
    BudgetStore as BudgetStore,
    CacheStore as CacheStore,
    DeadLetterStore as DeadLetterStore,
    NoticeStore as NoticeStore,
    StatsStore as StatsStore,
    Storage as Storage,
    TokenStore as TokenStore,
)


def open_storage(url: str, *, data_dir: Path, cluster: bool = False, cache_max: int = 256 * 1024**2) -> Storage:
    if url == "memory":
        return MemoryStorage(data_dir, cache_max)
    return RedisStorage.from_url(url, cluster=cluster)
