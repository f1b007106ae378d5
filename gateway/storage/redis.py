"""Redis storage, shared by every gateway process pointed at the same Redis.

Calls carry a short timeout: a dead Redis must cost each request milliseconds, not seconds.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from gateway.errors import StorageError

TIMEOUT = 0.25


class RedisStorage:
    name = "redis"

    def __init__(self, url: str, *, cluster: bool = False) -> None:
        options: dict[str, Any] = {
            "socket_timeout": TIMEOUT,
            "socket_connect_timeout": TIMEOUT,
        }
        self.client: Any = (
            RedisCluster.from_url(url, **options) if cluster else aioredis.from_url(url, **options)
        )

    async def ping(self) -> None:
        try:
            await self.client.ping()
        except (RedisError, OSError) as exc:
            raise StorageError(f"redis does not answer: {type(exc).__name__}") from None

    async def close(self) -> None:
        await self.client.aclose()
