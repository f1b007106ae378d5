"""Redis storage, shared by every gateway process pointed at the same Redis.

Calls carry a short timeout: a dead Redis must cost each request milliseconds, not
seconds. Keys are hash-tagged by vendor (``gateway:{vendor}:...``) so that one vendor's
keys share a Redis Cluster slot and its scripts can touch them together. The Lua
scripts are package data, registered once (EVALSHA, with the NOSCRIPT fallback that
redis-py's Script does).
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from gateway.errors import StorageError

TIMEOUT = 0.25


def _script(name: str) -> str:
    return files("gateway.storage").joinpath("lua", name).read_text(encoding="utf-8")


def key(vendor: str, name: str) -> str:
    return f"gateway:{{{vendor}}}:{name}"


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
        self._lock = self.client.register_script(_script("lock.lua"))
        self._unlock = self.client.register_script(_script("unlock.lua"))
        self._put_fenced = self.client.register_script(_script("put_fenced.lua"))

    async def _call(self, what: str, operation: Any) -> Any:
        try:
            return await operation
        except (RedisError, OSError) as exc:
            raise StorageError(f"redis {what} failed: {type(exc).__name__}") from None

    async def ping(self) -> None:
        await self._call("ping", self.client.ping())

    async def lock_refresh(self, vendor: str, ttl: float) -> int | None:
        keys = [key(vendor, "refresh-lock"), key(vendor, "refresh-fence")]
        fence = await self._call("lock", self._lock(keys=keys, args=[int(ttl * 1000)]))
        return int(fence) if fence else None

    async def unlock_refresh(self, vendor: str, fence: int) -> None:
        await self._call("unlock", self._unlock(keys=[key(vendor, "refresh-lock")], args=[fence]))

    async def get_token(self, vendor: str) -> bytes | None:
        value = await self._call("read", self.client.get(key(vendor, "token")))
        return bytes(value) if value is not None else None

    async def put_token(self, vendor: str, value: bytes, fence: int) -> bool:
        keys = [key(vendor, "refresh-lock"), key(vendor, "token")]
        return bool(await self._call("write", self._put_fenced(keys=keys, args=[fence, value])))

    async def close(self) -> None:
        await self.client.aclose()
