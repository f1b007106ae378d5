"""Shared state backends, chosen once from the storage URL.

``memory`` keeps state inside the process; ``redis://`` and ``rediss://`` share it among
every gateway process using that Redis. Backend failures surface as StorageError.
"""

from __future__ import annotations

from typing import Protocol

from gateway.storage.memory import MemoryStorage
from gateway.storage.redis import RedisStorage


class Storage(Protocol):
    name: str

    async def ping(self) -> None:
        """Returns when the backend answers; raises StorageError otherwise."""

    async def close(self) -> None: ...


def open_storage(url: str, *, cluster: bool = False) -> Storage:
    if url == "memory":
        return MemoryStorage()
    return RedisStorage(url, cluster=cluster)
