"""Shared storage misbehaving under load: a paused Redis, and a Redis restarted empty."""

import asyncio
import logging
import time

import redis.asyncio as aioredis

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
