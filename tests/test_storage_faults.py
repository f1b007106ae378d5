"""Shared storage misbehaving: a Redis paused under load, a Redis restarted empty, and the
storage health that decides the fallback once for budgets and breakers."""

import asyncio
import logging
import time

import pytest
import redis.asyncio as aioredis

from gateway.core.budget import BUCKET, FIXED, ROLLING, Charge
from gateway.errors import StorageError
from gateway.storage.health import RETRY, StorageHealth
from gateway.storage.redis import RedisStorage
from tests.backends import REDIS_LIKE, Clock
from tests.test_budgets import policy

LOAD = 20  # concurrent callers


async def _hammer(client, seconds, path="/v/x"):
    """LOAD callers each sending one request after another for ``seconds``: (status, latency) of each."""
    results = []
    deadline = time.monotonic() + seconds

    async def caller():
        while time.monotonic() < deadline:
            started = time.monotonic()
            response = await client.get(path)
            await response.read()
            results.append((response.status, time.monotonic() - started))

    await asyncio.gather(*(caller() for _ in range(LOAD)))
    return results


def _p99(latencies):
    ordered = sorted(latencies)
    return ordered[int(len(ordered) * 0.99)]


async def test_a_paused_redis_costs_a_request_one_timeout_at_most(gateway, vendor, redis_server, caplog):
    breaker = {"failure_ratio": 0.5, "window": "1m", "min_calls": 20, "open_for": "30s"}
    p = policy(vendor, {"name": "burst", "limit": 100000, "per": "10s"}, circuit_breaker=breaker)
    client = await gateway(p, config={"storage": redis_server.url})
    caplog.set_level(logging.INFO, logger="gateway")
    admin = aioredis.from_url(redis_server.url)

    async def pause_soon():
        await asyncio.sleep(0.7)
        await admin.execute_command("CLIENT", "PAUSE", 2500)

    try:
        results, _ = await asyncio.gather(_hammer(client, 4.0), pause_soon())
    finally:
        await admin.aclose()
    statuses = [status for status, _ in results]
    latencies = [latency for _, latency in results]
    print(f"\n{len(results)} requests, p99 {_p99(latencies) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms")
    assert set(statuses) == {200}
    warnings = [r for r in caplog.records if r.name.startswith("gateway.") and r.levelno >= logging.WARNING]
    assert len(warnings) <= 4, [r.getMessage() for r in warnings]
    assert max(latencies) < 2.0


def _most_in_any_window(arrivals, per):
    return max((sum(1 for t in arrivals if start <= t < start + per) for start in arrivals), default=0)


async def test_a_redis_restarted_empty_under_pressure_is_given_back_what_was_counted(gateway, vendor, redis_server):
    # Two gateways of one `serve --workers 2` on a quota of 20 per 10 s, hammered throughout.
    p = policy(vendor, {"name": "quota", "limit": 20, "per": "10s", "window": "rolling"})
    config = {"storage": redis_server.url, "workers": 2}
    gateways = [await gateway(p, config=config), await gateway(p, config=config)]

    async def restart_soon():
        await asyncio.sleep(1.5)
        redis_server.stop()
        redis_server.start()  # on the same port, empty

    *hammered, _ = await asyncio.gather(*(_hammer(g, 5.0) for g in gateways), restart_soon())
    arrivals = [r.at for r in vendor.received]
    print(f"\nadmitted {len(arrivals)}, most in any 10 s: {_most_in_any_window(arrivals, 10.0)}")
    assert _most_in_any_window(arrivals, 10.0) <= 22
    assert {status for results in hammered for status, _ in results} == {200, 429}


async def test_what_the_fallback_admitted_while_redis_was_away_still_counts_after(gateway, vendor, redis_server):
    p = policy(vendor, {"name": "quota", "limit": 20, "per": "10s", "window": "rolling"})
    config = {"storage": redis_server.url, "workers": 2}
    a, b = await gateway(p, config=config), await gateway(p, config=config)
    for g in (b, a):
        assert [(await g.get("/v/x")).status for _ in range(5)] == [200] * 5
    redis_server.stop()
    # Alone, a gateway takes its share of what was left: half of the 10.
    during = [r.status for r in await asyncio.gather(*(a.get("/v/x") for _ in range(8)))]
    assert during.count(200) == 5
    redis_server.start()  # empty
    for g in (a, b):
        assert (await (await g.get("/readyz")).json()).get("fallback") is None
    # The new Redis is given the 10 it had counted and the 5 admitted without it.
    assert [(await a.get("/v/x")).status for _ in range(6)] == [200] * 5 + [429]
    assert [r.status for r in await asyncio.gather(*(b.get("/v/x") for _ in range(3)))] == [429] * 3
    assert len(vendor.received) == 20


class _Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class _Listener:
    def __init__(self):
        self.changes = []

    def changed(self, answering):
        self.changes.append(answering)


def _try(health):
    """Whether a call with a fallback is let through to storage."""
    try:
        with health.attempt():
            raise StorageError("redis budget failed: TimeoutError")
    except StorageError as exc:
        return "not asked again" not in str(exc)


def test_after_a_failure_storage_is_asked_once_a_second_and_the_outage_is_logged_once(caplog):
    clock = _Clock()
    health = StorageHealth("redis", clock=clock)
    listener = _Listener()
    health.watch(listener.changed)
    caplog.set_level(logging.INFO, logger="gateway.storage")
    assert _try(health)  # the first failure
    assert [_try(health) for _ in range(100)] == [False] * 100  # the fallback at once, no round trip
    clock.now += RETRY
    assert _try(health) and not _try(health)  # one probe, which failed: another second
    clock.now += RETRY
    with health.attempt():
        clock.now += 0.5  # the probe is out: nobody else asks meanwhile
        assert not _try(health)
    assert not health.failing
    with health.attempt():
        pass
    assert listener.changes == [False, True]
    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert [level for level, _ in lines] == ["WARNING", "INFO"]
    assert "answers again after 2.5s" in lines[1][1]


T0 = 1_800_000_000.0
KINDS = [
    Charge("b", BUCKET, limit=10, per=10.0, cost=1),
    Charge("r", ROLLING, limit=10, per=100.0, cost=1),
    Charge("f", FIXED, limit=10, per=60.0, cost=1, window=(T0 - 10, T0 + 50, T0 + 110)),
]
LATER = {BUCKET: T0 + 60, ROLLING: T0 + 120, FIXED: T0 + 55}  # when each is whole again


async def _restored(backend, charge):
    """Levels before and after Redis loses its data, the charges taken in turns by two
    processes (so that each charged only some of the slots)."""
    clock = Clock()
    a, b = backend.open(clock), backend.open(clock)
    for i in range(8):
        clock.now = T0 + i
        await (a if i % 2 else b).charge_budgets("v", [charge], 0.0)
    clock.now = T0 + 8
    await b.peek_budgets("v", [charge])
    clock.now = T0 + 9
    before = (await a.peek_budgets("v", [charge])).levels[0]
    await a.client.flushall()  # as a Redis restarted without its data
    after = (await a.peek_budgets("v", [charge])).levels[0]
    await b.peek_budgets("v", [charge])  # b's view is merged in too
    merged = (await a.peek_budgets("v", [charge])).levels[0]
    clock.now = LATER[charge.kind]
    whole = (await a.charge_budgets("v", [charge], 0.0)).levels[0]
    return before, after, merged, whole


@pytest.mark.parametrize("backend", REDIS_LIKE, indirect=True)
@pytest.mark.parametrize("charge", KINDS, ids=lambda c: c.kind)
async def test_a_redis_that_lost_its_data_is_given_back_what_the_processes_saw(backend, charge, monkeypatch):
    monkeypatch.setattr("gateway.storage.redis.FULL_VIEW", 0.0)  # every reply has every count
    before, after, merged, whole = await _restored(backend, charge)
    assert after == merged == before
    assert whole.remaining == 9  # and what was put back passes when it would have


@pytest.mark.parametrize("backend", REDIS_LIKE, indirect=True)
@pytest.mark.parametrize("charge", KINDS, ids=lambda c: c.kind)
async def test_what_a_process_did_not_see_of_a_budget_is_put_back_as_late_as_it_could_be(
    backend, charge, monkeypatch
):
    monkeypatch.setattr("gateway.storage.redis.FULL_VIEW", 1e9)  # only the first reply has every count
    before, after, merged, whole = await _restored(backend, charge)
    assert after.remaining <= before.remaining and merged.remaining <= before.remaining  # never fewer counted
    assert whole.remaining == 9


@pytest.mark.parametrize("backend", REDIS_LIKE, indirect=True)
async def test_a_process_new_to_a_redis_takes_its_budgets_as_they_are(backend, caplog):
    quota = KINDS[1]
    clock = Clock(T0)
    a, b = backend.open(clock), backend.open(clock)
    for _ in range(3):
        await a.charge_budgets("v", [quota], 0.0)
    caplog.set_level(logging.WARNING, logger="gateway.storage")
    clock.now = T0 + 1
    assert (await b.peek_budgets("v", [quota])).levels[0].remaining == 7
    assert caplog.records == []  # nothing was lost: nothing is put back


async def test_a_breaker_open_in_redis_stays_open_while_redis_is_away(gateway, vendor, redis_server):
    breaker = {"failure_ratio": 0.5, "window": "1m", "min_calls": 2, "open_for": "30s"}
    client = await gateway({"vendor": "v", "upstream": vendor.url, "circuit_breaker": breaker},
                           config={"storage": redis_server.url})
    vendor.script(503, 503)
    assert [(await client.get("/v/x")).status for _ in range(2)] == [503, 503]
    assert (await (await client.get("/v/x")).json())["type"] == "circuit-open"
    redis_server.stop()
    answers = [await client.get("/v/x") for _ in range(3)]
    assert [(await r.json())["type"] for r in answers] == ["circuit-open"] * 3
    assert len(vendor.received) == 2  # the vendor still failing is left alone
    status = await (await client.get("/_gateway/status")).json()
    assert status["vendors"]["v"]["circuit_breaker"] == "open"


async def test_counts_that_stopped_counting_leave_the_budget_in_redis(redis_server):
    now = [T0]
    storage = RedisStorage.from_url(redis_server.url, clock=lambda: now[0])
    admin = aioredis.from_url(redis_server.url)
    quota = Charge("q", ROLLING, limit=10, per=10.0, cost=1)
    try:
        for now[0] in (T0, T0 + 0.5, T0 + 5):
            await storage.charge_budgets("v", [quota], 0.0)
        assert len([f for f in await admin.hkeys("gateway:{v}:budget:q") if f.startswith(b"c:")]) == 3
        now[0] = T0 + 12
        level = (await storage.charge_budgets("v", [quota], 0.0)).levels[0]
        assert level.remaining == 8  # the first two no longer count...
        fields = sorted(f for f in await admin.hkeys("gateway:{v}:budget:q") if f.startswith(b"c:"))
        assert len(fields) == 2  # ...and are gone from Redis: T0 + 5's slot and T0 + 12's
    finally:
        await storage.close()
        await admin.aclose()
