"""Redis storage, shared by every gateway process pointed at the same Redis.

Calls carry a short timeout: a dead Redis must cost each request milliseconds, not
seconds. Budget and breaker calls, which have a fallback, also go through ``health``:
once Redis failed they fail at once, but for one probe a second. Keys are hash-tagged by
vendor (``gateway:{vendor}:...``) so that one vendor's keys share a Redis Cluster slot
and its scripts can touch them together. The Lua scripts are package data, registered
once (EVALSHA; the whole script, EVAL, when Redis does not know it), and on a single node
called on a connection of our own (gateway.storage.redis_wire), cheaper than redis-py.

A Redis restarted without its data (no ``appendonly``) would forget every count and
admit a quota's whole limit again. So this process keeps what it last saw of each
budget; the vendor's epoch key tells the script whether this Redis is the one that saw
it, and when it is not, that view is merged back in (each count the larger of the
Redis's and ours) before the call counts.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from importlib.resources import files
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError, RedisClusterException, RedisError

from gateway.config.model import CircuitBreaker
from gateway.config.vendor_signals import AuthFailures
from gateway.core.auth_stop import Admission as AuthAdmission, Standing
from gateway.core.breaker import Admission
from gateway.core.budget import Adjustment, BudgetState, Charge, Level, Verdict
from gateway.core.dead_letter import DeadLetter
from gateway.errors import StorageError
from gateway.storage.health import StorageHealth
from gateway.storage.redis_budget import (
    CHARGE_FIELDS,
    LEVEL_FIELDS,
    NOTHING_SAID,
    BudgetView,
    PackedCharges,
    adjustment_fields,
    charge_args,
)
from gateway.storage.redis_wire import Arg, ScriptWire, bulk
from gateway.storage.redis_stats import queue_add, queue_read
from gateway.storage.stores import StatsRead

log = logging.getLogger("gateway.storage")

TIMEOUT = 0.25
# How often a budget call asks for every count of its budgets (else only those it changed):
# what a process would put back after a restart is then at most this old.
FULL_VIEW = 1.0
PACKED_MAX = 4096  # charges kept packed per vendor, before they are packed afresh


def _script(name: str) -> str:
    return files("gateway.storage").joinpath("lua", name).read_text(encoding="utf-8")


def key(vendor: str, name: str) -> str:
    return f"gateway:{{{vendor}}}:{name}"


class RedisStorage:
    """Every store on one Redis client: a plain client, or a RedisCluster when ``cluster``
    (a lookup's reads then go as a pipeline, their keys being in different slots).

    ``clock``, when given, is the time the scripts count with instead of Redis's own
    (``TIME``): the parity tables run the same scenario on every backend with it."""

    name = "redis"

    def __init__(
        self, client: Any, *, cluster: bool = False, clock: Callable[[], float] | None = None,
        wire: ScriptWire | None = None,
    ) -> None:
        self._cluster = cluster
        self._clock = clock
        self.client: Any = client
        self._lock = self.client.register_script(_script("lock.lua"))
        self._unlock = self.client.register_script(_script("unlock.lua"))
        self._put_if_unchanged = self.client.register_script(_script("put_if_unchanged.lua"))
        self._breaker = self.client.register_script(_script("breaker.lua"))
        self._auth_stop = self.client.register_script(_script("auth_stop.lua"))
        self._put_entry = self.client.register_script(_script("put_entry.lua"))
        self._update_entry = self.client.register_script(_script("update_entry.lua"))
        self._budget = self.client.register_script(_script("budget.lua"))
        self._invalidate = self.client.register_script(_script("invalidate.lua"))
        self._wire = wire
        self.health = StorageHealth("redis")
        self._epochs: dict[str, str] = {}  # per vendor: the epoch of the Redis our views are of
        self._views: dict[str, dict[str, BudgetView]] = {}  # per vendor, per budget key
        self._restoring: dict[str, asyncio.Lock] = {}
        self._full_view_at: dict[str, float] = {}  # per vendor (monotonic): when to ask for every count
        # Per vendor, per ids of a call's charges: them, and what the wire sends of them.
        self._packed: dict[str, dict[tuple[int, ...], PackedCharges]] = {}

    @classmethod
    def from_url(cls, url: str, *, cluster: bool = False, clock: Callable[[], float] | None = None) -> RedisStorage:
        options: dict[str, Any] = {
            "socket_timeout": TIMEOUT,
            "socket_connect_timeout": TIMEOUT,
            # After Redis restarts, every pooled connection is dead and fails its next
            # command: one immediate retry on a fresh connection hides that. A timeout
            # is not retried: a hung Redis must cost one timeout, not two.
            "retry": Retry(NoBackoff(), 1, supported_errors=(ConnectionError,)),
        }
        client = RedisCluster.from_url(url, **options) if cluster else aioredis.from_url(url, **options)
        # The scripts' calls (a budget charge on every request) skip redis-py where they can.
        wire = ScriptWire(url, TIMEOUT) if ScriptWire.serves(url, cluster) else None
        return cls(client, cluster=cluster, clock=clock, wire=wire)

    def _now(self) -> str:
        """The time a script counts with: "" for Redis's own clock."""
        return "" if self._clock is None else repr(self._clock())

    async def _call(self, what: str, operation: Any) -> Any:
        try:
            return await operation
        except (RedisError, RedisClusterException, OSError) as exc:  # the latter is no RedisError
            raise StorageError(f"redis {what} failed: {type(exc).__name__}") from None

    async def _guarded(self, what: str, script: Any, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        """A script call that has a fallback: through ``health``, so that while Redis fails it
        fails at once, without a round trip (but for the probe). (``_call``'s work, inline:
        one coroutine less on every request's way.)"""
        with self.health.attempt():
            try:
                return await self._run(script, keys, args)
            except (RedisError, OSError) as exc:
                raise _failed(what, exc) from None

    def _run(self, script: Any, keys: Sequence[str], args: Sequence[Arg]) -> Awaitable[Any]:
        """A Lua script's call, EVALSHA (EVAL if Redis does not know the script)."""
        if self._wire is not None:
            return self._wire.evalsha(script.script, script.sha, keys, args)
        return script(keys=keys, args=args)  # type: ignore[no-any-return]

    async def ping(self) -> None:
        await self._call("ping", self.client.ping())

    async def lock_refresh(self, vendor: str, ttl: float) -> int | None:
        keys = [key(vendor, "refresh-lock"), key(vendor, "refresh-fence")]
        fence = await self._call("lock", self._run(self._lock, keys, [int(ttl * 1000)]))
        return int(fence) if fence else None

    async def unlock_refresh(self, vendor: str, fence: int) -> None:
        await self._call("unlock", self._run(self._unlock, [key(vendor, "refresh-lock")], [fence]))

    async def get_token(self, vendor: str) -> bytes | None:
        value = await self._call("read", self.client.get(key(vendor, "token")))
        return bytes(value) if value is not None else None

    async def put_token(self, vendor: str, value: bytes, previous: bytes | None) -> bool:
        args = [value, previous or b""]
        return bool(await self._call("write", self._run(self._put_if_unchanged, [key(vendor, "token")], args)))

    async def breaker_state(self, vendor: str, config: CircuitBreaker) -> int:
        return (await self._breaker_call(vendor, config, "peek")).state

    async def breaker_admit(self, vendor: str, config: CircuitBreaker) -> Admission:
        return await self._breaker_call(vendor, config, "admit")

    async def breaker_record(self, vendor: str, config: CircuitBreaker, failure: bool, probe: bool) -> int:
        return (await self._breaker_call(vendor, config, "record", failure=failure, probe=probe)).state

    async def _breaker_call(
        self, vendor: str, config: CircuitBreaker, op: str, *, failure: bool = False, probe: bool = False
    ) -> Admission:
        """One breaker step (breaker.lua)."""
        args: list[str | float] = [op, self._now(), config.window, config.min_calls, config.failure_ratio,
                config.open_for, int(failure), int(probe)]
        allowed, is_probe, retry_after, state = await self._guarded("breaker", self._breaker, [key(vendor, "breaker")], args)
        return Admission(bool(allowed), bool(is_probe), float(retry_after), int(state))

    async def auth_stop_peek(self, vendor: str) -> Standing:
        state, probing, retry_after = await self._auth_stop_call(vendor, "peek")
        return Standing(int(state), bool(probing), float(retry_after))

    async def auth_stop_admit(self, vendor: str) -> AuthAdmission:
        allowed, probe, retry_after, state = await self._auth_stop_call(vendor, "admit")
        return AuthAdmission(bool(allowed), bool(probe), float(retry_after), int(state))

    async def auth_stop_record(self, vendor: str, config: AuthFailures, refused: bool, probe: bool) -> int:
        reply = await self._auth_stop_call(vendor, "record", config, refused=refused, probe=probe)
        return int(reply[3])

    async def auth_stop_unanswered(self, vendor: str, probe: bool) -> int:
        return int((await self._auth_stop_call(vendor, "unanswered", probe=probe))[3])

    async def auth_stop_clear(self, vendor: str) -> None:
        await self._auth_stop_call(vendor, "credentials_changed")

    async def _auth_stop_call(
        self, vendor: str, op: str, config: AuthFailures = AuthFailures(), *, refused: bool = False,
        probe: bool = False,
    ) -> Any:
        """One step of the vendor's auth stop (auth_stop.lua)."""
        args: list[str | float] = [op, self._now(), config.after, config.probe_every,
                                   int(refused), int(probe)]
        return await self._guarded("auth stop", self._auth_stop, [key(vendor, "auth_stop")], args)

    def charge_budgets(self, vendor: str, charges: Sequence[Charge], max_wait: float) -> Coroutine[Any, Any, Verdict]:
        return self._budget_call(vendor, "charge", charges, arg=max_wait)  # one coroutine less per request

    async def refund_budgets(self, vendor: str, charges: Sequence[Charge], at: float) -> None:
        await self._budget_call(vendor, "refund", charges, arg=at)

    async def adjust_budgets(self, vendor: str, charges: Sequence[Charge], said: Sequence[Adjustment]) -> Verdict:
        return await self._budget_call(vendor, "adjust", charges, said=said)

    async def peek_budgets(self, vendor: str, charges: Sequence[Charge]) -> Verdict:
        return await self._budget_call(vendor, "peek", charges)

    async def _budget_call(
        self, vendor: str, op: str, charges: Sequence[Charge], *, arg: float = 0.0,
        said: Sequence[Adjustment] = (),
    ) -> Verdict:
        """One budget step in one round trip (two more, once, after Redis lost the vendor's
        budgets)."""
        fields = [[*adjustment_fields(a), ""] for a in said] if said else None
        for _ in range(3):
            known = self._epochs.get(vendor, "")
            reply, every = await self._budget_script(vendor, op, charges, fields, arg)
            if reply[0] != b"epoch":
                return self._verdict(vendor, charges, reply, every)
            async with self._restoring.setdefault(vendor, asyncio.Lock()):
                if self._epochs.get(vendor, "") == known:  # else a concurrent call did it meanwhile
                    await self._restore(vendor, bytes(reply[1]).decode())
        raise StorageError("redis budget failed: the vendor's budgets vanished again as they were put back")

    async def _restore(self, vendor: str, held: str) -> None:
        """Redis holds another epoch of the vendor's budgets than ours (``held``), or none:
        put back what this process last saw of them (nothing, if it saw nothing)."""
        views = list(self._views.get(vendor, {}).values())
        if held and not views:
            self._epochs[vendor] = held  # a Redis this process had not used: nothing to put back
            return
        if views:
            log.warning(
                "redis lost the budgets of %s (restarted without its data? run it with appendonly yes):"
                " putting back what this process last saw of %d of them", vendor, len(views),
            )
        charges = [view.charge for view in views]
        fields = [["", "", "", "", view.field()] for view in views]
        reply, every = await self._budget_script(vendor, "restore", charges, fields, 0.0, secrets.token_hex(8))
        self._verdict(vendor, charges, reply, every)

    async def _budget_script(
        self, vendor: str, op: str, charges: Sequence[Charge], fields: Sequence[list[str]] | None, arg: float,
        new_epoch: str = "",
    ) -> tuple[Any, bool]:
        """The budget script's call; ``fields``: each charge's adjustment and restore fields,
        None when the call says nothing of them."""
        every = op == "restore" or time.monotonic() >= self._full_view_at.get(vendor, 0.0)
        if every:  # one call a second asks, not every call until one has the answer
            self._full_view_at[vendor] = time.monotonic() + FULL_VIEW
        head = (op, self._now(), repr(arg), self._epochs.get(vendor, ""), new_epoch, "1" if every else "0")
        with self.health.attempt():  # (``_guarded``'s work, inline)
            try:
                if self._wire is not None:
                    count = 8 + len(charges) * (1 + CHARGE_FIELDS + len(NOTHING_SAID))
                    body = self._budget_body(vendor, head, charges, fields)
                    return await self._wire.script(self._budget.script, self._budget.sha, count, body), every
                keys = _budget_keys(vendor, charges)
                extras = fields or [NOTHING_SAID] * len(charges)
                args = [*head, *(a for c, extra in zip(charges, extras) for a in (*charge_args(c), *extra))]
                return await self._budget(keys=keys, args=args), every
            except (RedisError, OSError) as exc:
                raise _failed("budget", exc) from None

    def _budget_body(self, vendor: str, head: tuple[str, ...], charges: Sequence[Charge],
                     fields: Sequence[list[str]] | None) -> bytes:
        """The budget script's keys and arguments for the wire: all but the head packed once
        per set of charges (the same charges on most requests of a policy)."""
        packed = self._packed.get(vendor)
        if packed is None or len(packed) >= PACKED_MAX:
            packed = self._packed[vendor] = {}
        ids = tuple(map(id, charges))
        known = packed.get(ids)  # it holds the charges: their ids are no others' meanwhile
        if known is None:
            known = packed[ids] = PackedCharges.of(_budget_keys(vendor, charges), charges)
        op, now, arg, epoch, new_epoch, every = head  # ASCII
        middle = (f"${len(op)}\r\n{op}\r\n${len(now)}\r\n{now}\r\n${len(arg)}\r\n{arg}\r\n${len(epoch)}\r\n"
                  f"{epoch}\r\n${len(new_epoch)}\r\n{new_epoch}\r\n$1\r\n{every}\r\n").encode()
        if fields is None:
            return known.keys + middle + known.nothing_said
        said = "".join(args + "".join(map(bulk, extra)) for args, extra in zip(known.args, fields))
        return known.keys + middle + said.encode()

    def _verdict(self, vendor: str, charges: Sequence[Charge], reply: Any, every: bool) -> Verdict:
        """A budget reply as a Verdict; what it shows of each budget is remembered. (Its
        integers come as ints and its strings as bytes, from hiredis and redis-py alike.)"""
        self._epochs[vendor] = reply[4].decode()
        wait, at = float(reply[1]), float(reply[3])
        now = at - wait
        views = self._views.setdefault(vendor, {})
        levels, exceeded = [], []
        first = 5
        for charge in charges:
            remaining, reset, paused_for, over, tat, paused, used, changed = reply[first : first + LEVEL_FIELDS]
            first += LEVEL_FIELDS
            levels.append(Level(remaining, float(reset), float(paused_for)))
            exceeded.append(over == 1)
            view = views.get(charge.key)
            if view is None:
                view = views[charge.key] = BudgetView(charge, BudgetState())
            view.charge = charge
            view.see(float(tat), float(paused), float(used), changed.decode(), now, every)
        return Verdict(reply[0] == 1, wait, reply[2], tuple(levels), tuple(exceeded), at)

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
        await self._call("cache invalidation", self._run(self._invalidate, keys, args))

    async def cache_put(self, key: str, blob: bytes, seconds: float) -> None:
        await self._call("cache write", self.client.set(self._cache(key, "answer"), blob, px=max(1, int(seconds * 1000))))

    async def cache_lock(self, key: str, seconds: float) -> str | None:
        token = secrets.token_hex(8)
        lock = self._cache(key, "fetching")
        taken = await self._call("cache lock", self.client.set(lock, token, nx=True, px=max(1, int(seconds * 1000))))
        return token if taken else None

    async def cache_unlock(self, key: str, token: str) -> None:
        await self._call("cache unlock", self._run(self._unlock, [self._cache(key, "fetching")], [token]))

    # Dead letters: one hash of entries and sorted-set indexes (all vendors, and per vendor)
    # whose members are the time-ordered ids, under one hash tag so they share a slot.
    _ENTRIES = "gateway:{dead-letters}:entries"

    @staticmethod
    def _index(vendor: str | None) -> str:
        return "gateway:{dead-letters}:index" + (f":{vendor}" if vendor else "")

    async def put_dead_letter(self, entry: DeadLetter) -> None:
        keys = [self._ENTRIES, self._index(None), self._index(entry.vendor)]
        await self._call("write", self._run(self._put_entry, keys, [entry.id, entry.to_json()]))

    async def update_dead_letter(self, entry: DeadLetter) -> bool:
        keys = [self._ENTRIES]
        return bool(await self._call("write", self._run(self._update_entry, keys, [entry.id, entry.to_json()])))

    async def claim_dead_letter(self, entry_id: str, seconds: float) -> bool:
        claim = f"gateway:{{dead-letters}}:claim:{entry_id}"
        return bool(await self._call("write", self.client.set(claim, 1, nx=True, px=int(seconds * 1000))))

    async def claim_notice(self, name: str, seconds: float) -> bool:
        claim = f"gateway:{{notify}}:{name}"
        return bool(await self._call("write", self.client.set(claim, 1, nx=True, ex=max(1, int(seconds)))))

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

    async def add_stats(self, minutes: Mapping[tuple[str, int], Mapping[str, int]],
                        successes: Mapping[str, float]) -> None:
        pipe = self.client.pipeline(transaction=False)
        queue_add(pipe, minutes, successes)
        await self._call("stats write", pipe.execute())

    async def read_stats(self, vendors: Sequence[str], spans: Sequence[tuple[int, int]]) -> StatsRead:
        if not vendors:
            return {}
        pipe = self.client.pipeline(transaction=False)
        parse = queue_read(pipe, vendors, spans)
        return parse(await self._call("stats read", pipe.execute()))

    async def close(self) -> None:
        if self._wire is not None:
            self._wire.close()
        await self.client.aclose()


def _budget_keys(vendor: str, charges: Sequence[Charge]) -> list[str]:
    """The budget script's keys: each charge's, then the vendor's epoch."""
    return [key(vendor, f"budget:{c.key}") for c in charges] + [key(vendor, "budget-epoch")]


def _failed(what: str, exc: BaseException) -> StorageError:
    return StorageError(f"redis {what} failed: {type(exc).__name__}")
