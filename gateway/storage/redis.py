"""Redis storage, shared by every gateway process pointed at the same Redis.

Calls carry a short timeout: a dead Redis must cost each request milliseconds, not
seconds. Keys are hash-tagged by vendor (``gateway:{vendor}:...``) so that one vendor's
keys share a Redis Cluster slot and its scripts can touch them together. The Lua
scripts are package data, registered once (EVALSHA, with the NOSCRIPT fallback that
redis-py's Script does).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from importlib.resources import files
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError, RedisError

from gateway.config.model import CircuitBreaker
from gateway.core.breaker import Admission
from gateway.core.budget import Adjustment, Charge, Level, Verdict
from gateway.deadletters import DeadLetter
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
            # After Redis restarts, every pooled connection is dead and fails its next
            # command: one immediate retry on a fresh connection hides that. A timeout
            # is not retried: a hung Redis must cost one timeout, not two.
            "retry": Retry(NoBackoff(), 1, supported_errors=(ConnectionError,)),
        }
        self._cluster = cluster
        self.client: Any = (
            RedisCluster.from_url(url, **options) if cluster else aioredis.from_url(url, **options)
        )
        self._lock = self.client.register_script(_script("lock.lua"))
        self._unlock = self.client.register_script(_script("unlock.lua"))
        self._put_if_unchanged = self.client.register_script(_script("put_if_unchanged.lua"))
        self._breaker = self.client.register_script(_script("breaker.lua"))
        self._update_entry = self.client.register_script(_script("update_entry.lua"))
        self._budget = self.client.register_script(_script("budget.lua"))
        self._invalidate = self.client.register_script(_script("invalidate.lua"))

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

    async def put_token(self, vendor: str, value: bytes, previous: bytes | None) -> bool:
        args = [value, previous or b""]
        return bool(await self._call("write", self._put_if_unchanged(keys=[key(vendor, "token")], args=args)))

    async def breaker_state(self, vendor: str, config: CircuitBreaker) -> int:
        return (await self.breaker_call(vendor, config, "peek")).state

    async def breaker_admit(self, vendor: str, config: CircuitBreaker) -> Admission:
        return await self.breaker_call(vendor, config, "admit")

    async def breaker_record(self, vendor: str, config: CircuitBreaker, failure: bool, probe: bool) -> int:
        return (await self.breaker_call(vendor, config, "record", failure=failure, probe=probe)).state

    async def breaker_call(
        self, vendor: str, config: CircuitBreaker, op: str, *, failure: bool = False, probe: bool = False,
        now: float | None = None,
    ) -> Admission:
        """One breaker step; ``now`` only for tests (Redis's own clock otherwise)."""
        args: list[str | float] = [op, "" if now is None else repr(now), config.window, config.min_calls, config.failure_ratio,
                config.open_for, int(failure), int(probe)]
        allowed, is_probe, retry_after, state = await self._call(
            "breaker", self._breaker(keys=[key(vendor, "breaker")], args=args)
        )
        return Admission(bool(allowed), bool(is_probe), float(retry_after), int(state))

    async def charge_budgets(self, vendor: str, charges: Sequence[Charge], max_wait: float) -> Verdict:
        return await self.budget_call(vendor, "charge", charges, arg=max_wait)

    async def refund_budgets(self, vendor: str, charges: Sequence[Charge], at: float) -> None:
        await self.budget_call(vendor, "refund", charges, arg=at)

    async def adjust_budgets(self, vendor: str, charges: Sequence[Charge], said: Sequence[Adjustment]) -> Verdict:
        return await self.budget_call(vendor, "adjust", charges, said=said)

    async def peek_budgets(self, vendor: str, charges: Sequence[Charge]) -> Verdict:
        return await self.budget_call(vendor, "peek", charges)

    async def budget_call(
        self, vendor: str, op: str, charges: Sequence[Charge], *, arg: float = 0.0,
        said: Sequence[Adjustment] = (), now: float | None = None,
    ) -> Verdict:
        """One budget step in one round trip; ``now`` only for tests (Redis's own clock otherwise)."""
        args: list[str | int] = [op, "" if now is None else repr(now), repr(arg)]
        for i, c in enumerate(charges):
            what = said[i] if said else Adjustment()
            args += [c.kind, repr(c.limit), repr(c.per), c.cost, repr(c.held), int(c.shadow), *map(repr, c.window),
                     repr(c.margin)]
            args += ["" if v is None else repr(v) for v in (what.pause, what.remaining, what.reset)]
        keys = [key(vendor, f"budget:{c.key}") for c in charges]
        reply = await self._call("budget", self._budget(keys=keys, args=args))
        levels = tuple(Level(int(reply[i]), float(reply[i + 1])) for i in range(4, len(reply), 3))
        exceeded = tuple(bool(int(reply[i + 2])) for i in range(4, len(reply), 3))
        return Verdict(bool(int(reply[0])), float(reply[1]), int(reply[2]), levels, exceeded, float(reply[3]))

    # Stored answers are tagged by their own key, not the vendor's: a vendor's cache spreads
    # over the cluster, and an answer and its fetch lock share a slot.
    @staticmethod
    def _cache(key: str, part: str) -> str:
        return f"gateway:{{cache:{key}}}:{part}"

    # Generations are tagged by vendor, so a write bumps all of its own in one script call.
    # A lookup reads its answer and its generations in one round trip: one MGET, or on a
    # cluster, where they live in different slots, a pipeline of GETs (one request per
    # node, sent together). The MGET is cheaper for the gateway: redis-py's pipelines cost
    # about as much CPU per call as the rest of a cache hit.
    @staticmethod
    def _generation(vendor: str, name: str) -> str:
        return key(vendor, f"cache-generation:{name}")

    async def cache_get(self, key: str, vendor: str, generations: Sequence[str]) -> tuple[bytes | None, list[int]]:
        keys = [self._cache(key, "answer"), *(self._generation(vendor, name) for name in generations)]
        if self._cluster:
            pipe = self.client.pipeline(transaction=False)
            for name in keys:
                pipe.get(name)
            read = pipe.execute()
        else:
            read = self.client.mget(keys)
        value, *found = await self._call("cache read", read)
        try:
            current = [int(g) if g is not None else 0 for g in found]
        except ValueError:
            raise StorageError("redis cache read failed: a cache generation is not a number") from None
        return (bytes(value) if value is not None else None), current

    async def cache_invalidate(self, vendor: str, bumps: Mapping[str, float]) -> None:
        keys = [self._generation(vendor, name) for name in bumps]
        args = [max(1, int(seconds * 1000)) for seconds in bumps.values()]
        await self._call("cache invalidation", self._invalidate(keys=keys, args=args))

    async def cache_put(self, key: str, blob: bytes, seconds: float) -> None:
        await self._call("cache write", self.client.set(self._cache(key, "answer"), blob, px=max(1, int(seconds * 1000))))

    async def cache_lock(self, key: str, seconds: float) -> str | None:
        token = secrets.token_hex(8)
        lock = self._cache(key, "fetching")
        taken = await self._call("cache lock", self.client.set(lock, token, nx=True, px=max(1, int(seconds * 1000))))
        return token if taken else None

    async def cache_unlock(self, key: str, token: str) -> None:
        await self._call("cache unlock", self._unlock(keys=[self._cache(key, "fetching")], args=[token]))

    # Dead letters: one hash of entries and sorted-set indexes (all vendors, and per vendor)
    # whose members are the time-ordered ids, under one hash tag so they share a slot.
    _ENTRIES = "gateway:{dead-letters}:entries"

    @staticmethod
    def _index(vendor: str | None) -> str:
        return "gateway:{dead-letters}:index" + (f":{vendor}" if vendor else "")

    async def put_dead_letter(self, entry: DeadLetter) -> None:
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(self._ENTRIES, entry.id, entry.to_json())
        pipe.zadd(self._index(None), {entry.id: 0})
        pipe.zadd(self._index(entry.vendor), {entry.id: 0})
        await self._call("write", pipe.execute())

    async def update_dead_letter(self, entry: DeadLetter) -> bool:
        keys = [self._ENTRIES]
        return bool(await self._call("write", self._update_entry(keys=keys, args=[entry.id, entry.to_json()])))

    async def claim_dead_letter(self, entry_id: str, seconds: float) -> bool:
        claim = f"gateway:{{dead-letters}}:claim:{entry_id}"
        return bool(await self._call("write", self.client.set(claim, 1, nx=True, px=int(seconds * 1000))))

    async def release_dead_letter(self, entry_id: str) -> None:
        await self._call("write", self.client.delete(f"gateway:{{dead-letters}}:claim:{entry_id}"))

    async def get_dead_letter(self, entry_id: str) -> DeadLetter | None:
        raw = await self._call("read", self.client.hget(self._ENTRIES, entry_id))
        return DeadLetter.from_json(raw) if raw is not None else None

    async def delete_dead_letter(self, entry_id: str) -> bool:
        entry = await self.get_dead_letter(entry_id)
        if entry is None:
            return False
        pipe = self.client.pipeline(transaction=True)
        pipe.hdel(self._ENTRIES, entry_id)
        pipe.zrem(self._index(None), entry_id)
        pipe.zrem(self._index(entry.vendor), entry_id)
        removed, _, _ = await self._call("write", pipe.execute())
        return bool(removed)

    async def list_dead_letters(self, vendor: str | None, after: str, limit: int) -> list[DeadLetter]:
        low = f"({after}" if after else "-"
        ids = await self._call("read", self.client.zrangebylex(self._index(vendor), low, "+", 0, limit))
        if not ids:
            return []
        raws = await self._call("read", self.client.hmget(self._ENTRIES, ids))
        return [DeadLetter.from_json(raw) for raw in raws if raw is not None]

    async def count_dead_letters(self, vendor: str) -> int:
        return int(await self._call("read", self.client.zcard(self._index(vendor))))

    async def close(self) -> None:
        await self.client.aclose()
