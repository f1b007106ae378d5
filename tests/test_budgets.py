"""Vendor budgets, black box: a real gateway in front of a mock vendor that counts arrivals."""

import asyncio
import time

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.mock_vendor import answer

CALLERS = [
    {"name": "router", "key": "${ROUTER_KEY}", "priority": "high"},
    {"name": "batch", "key": "${BATCH_KEY}"},
    {"name": "sync", "key": "${SYNC_KEY}"},
]
KEYS = {"ROUTER_KEY": "router-key-123", "BATCH_KEY": "batch-key-123", "SYNC_KEY": "sync-key-123"}


def policy(vendor, *budgets, wait=0, **rest):
    return {"vendor": "v", "upstream": vendor.url, "budgets": list(budgets), "when_exhausted": {"wait": wait}, **rest}


async def burst(client, n, path="/v/x", **kwargs):
    return await asyncio.gather(*(client.get(path, **kwargs) for _ in range(n)))


def metric_samples(text):
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_a_burst_over_the_limit_gets_429_with_the_exact_retry_after(gateway, vendor):
    client = await gateway(policy(vendor, {"name": "burst", "limit": 5, "per": "10s"}))
    answers = await burst(client, 8)
    statuses = sorted(r.status for r in answers)
    assert statuses == [200] * 5 + [429] * 3
    assert len(vendor.received) == 5
    refused = next(r for r in answers if r.status == 429)
    assert refused.headers["Content-Type"] == "application/problem+json"
    assert refused.headers["Retry-After"] == "2"  # one token every 2 s
    problem = await refused.json()
    assert problem["type"] == "budget-exhausted" and problem["budget"] == "burst"
    assert problem["vendor"] == "v" and problem["retry_after"] == 2
    admitted = next(r for r in answers if r.status == 200)
    assert admitted.headers["RateLimit-Policy"] == '"burst";q=5;w=10'
    assert admitted.headers["RateLimit"].startswith('"burst";r=')
    assert admitted.headers["RateLimit-Limit"] == "5"


async def test_rate_limit_headers_count_down(gateway, vendor):
    client = await gateway(policy(vendor, {"name": "burst", "limit": 3, "per": "30s"}, {"name": "daily", "limit": 100, "per": "1d", "window": "rolling"}))
    seen = []
    for _ in range(3):
        response = await client.get("/v/x")
        seen.append(response.headers["RateLimit-Remaining"])
    assert seen == ["2", "1", "0"]
    assert response.headers["RateLimit-Policy"] == '"burst";q=3;w=30, "daily";q=100;w=86400'
    assert response.headers["RateLimit"].startswith('"burst";r=0;t=30, "daily";r=97;t=')
    assert response.headers["RateLimit-Reset"] == "30"  # the tightest: the burst bucket


async def test_requests_wait_their_turn_instead_of_failing(gateway, vendor):
    client = await gateway(policy(vendor, {"name": "burst", "limit": 2, "per": "1s"}, wait="5s"))
    started = time.monotonic()
    answers = []
    tasks = []
    for i in range(6):  # staggered so their arrival order is known
        tasks.append(asyncio.create_task(client.get(f"/v/{i}")))
        await asyncio.sleep(0.05)
    answers = await asyncio.gather(*tasks)
    assert [r.status for r in answers] == [200] * 6
    arrivals = [r.at - started for r in vendor.received]
    assert [r.raw_path for r in vendor.received] == [f"/{i}" for i in range(6)]  # first come, first served
    # 2 at once, then one every 0.5 s: never sooner (a loaded machine may only send later).
    assert all(at >= 0.5 * (i - 1) - 0.02 for i, at in enumerate(arrivals[2:], start=2)), arrivals
    assert arrivals[-1] < 4.5  # waited its turn, not the whole 5 s


async def test_max_wait_header_lowers_the_wait(gateway, vendor):
    client = await gateway(policy(vendor, {"name": "burst", "limit": 1, "per": "10s"}, wait="30s"))
    assert (await client.get("/v/x")).status == 200
    started = time.monotonic()
    response = await client.get("/v/x", headers={"X-Gateway-Max-Wait": "0"})
    assert response.status == 429 and time.monotonic() - started < 5  # not the 10 s a wait would take
    assert response.headers["Retry-After"] == "10"
    response = await client.get("/v/x", headers={"X-Gateway-Max-Wait": "soon"})
    assert response.status == 400 and "X-Gateway-Max-Wait" in (await response.json())["detail"]
    assert len(vendor.received) == 1


async def test_a_rolling_quota_is_never_exceeded_under_hammering(gateway, vendor):
    client = await gateway(policy(vendor, {"name": "quota", "limit": 5, "per": "1s", "window": "rolling"}))
    statuses = []
    started = time.monotonic()
    while len(vendor.received) < 15 and time.monotonic() < started + 30:
        statuses += [r.status for r in await burst(client, 10)]
        await asyncio.sleep(0.05)
    arrivals = [r.at for r in vendor.received]
    most = max(sum(1 for t in arrivals if start <= t < start + 1.0) for start in arrivals)
    assert most <= 5
    assert len(arrivals) >= 15  # and the quota is used again in each new second
    assert statuses.count(200) == len(arrivals) and 429 in statuses


async def test_an_endpoint_budget_limits_only_its_endpoint(gateway, vendor):
    search = {"name": "search", "limit": 1, "per": "10s", "match": {"methods": ["POST"], "path": "/crm/*/search"}}
    client = await gateway(policy(vendor, search))
    assert (await client.post("/v/crm/contacts/search", data=b"{}")).status == 200
    refused = await client.post("/v/crm/companies/search", data=b"{}")
    assert refused.status == 429 and (await refused.json())["budget"] == "search"
    assert (await client.get("/v/crm/contacts/search")).status == 200
    assert (await client.post("/v/crm/contacts", data=b"{}")).status == 200
    assert "RateLimit-Policy" not in (await client.get("/v/other")).headers


async def test_a_per_caller_bucket_limits_each_caller_alone(gateway, vendor):
    client = await gateway(
        policy(vendor, {"name": "per-caller", "limit": 2, "per": "10s", "key": "caller"}),
        config={"callers": CALLERS},
        env=KEYS,
    )
    batch = {"X-Gateway-Key": "batch-key-123"}
    assert [r.status for r in await burst(client, 3, headers=batch)].count(429) == 1
    sync = {"X-Gateway-Key": "sync-key-123"}
    assert [r.status for r in await burst(client, 2, headers=sync)] == [200, 200]


async def test_the_reserve_is_kept_for_high_priority_callers(gateway, vendor):
    client = await gateway(
        policy(vendor, {"name": "burst", "limit": 5, "per": "60s", "reserve": "40%"}),
        config={"callers": CALLERS},
        env=KEYS,
    )
    batch = await burst(client, 5, headers={"X-Gateway-Key": "batch-key-123"})
    assert sorted(r.status for r in batch) == [200, 200, 200, 429, 429]
    router = await burst(client, 3, headers={"X-Gateway-Key": "router-key-123"})
    assert sorted(r.status for r in router) == [200, 200, 429]


async def test_an_upstream_429_pauses_the_budget_for_every_caller(gateway, vendor):
    vendor.script(answer(429, b'{"error":"slow down"}', {"Retry-After": "3"}))
    client = await gateway(policy(vendor, {"name": "burst", "limit": 100, "per": "1s"}))
    first = await client.get("/v/x")
    assert first.status == 429 and (await first.json(content_type=None)) == {"error": "slow down"}  # the vendor's own
    second = await client.get("/v/y")
    assert second.status == 429 and second.headers["Retry-After"] == "3"
    assert (await second.json())["type"] == "budget-exhausted"
    assert len(vendor.received) == 1


async def test_a_retried_429_waits_out_the_pause_then_succeeds(gateway, vendor):
    vendor.script(answer(429, headers={"Retry-After": "1"}))
    retry = {"attempts": 3, "on": [429], "backoff": {"initial": "10ms", "jitter": 0}}
    client = await gateway(policy(vendor, {"name": "burst", "limit": 100, "per": "1s"}, wait="5s", retry=retry))
    response = await client.get("/v/x")
    assert response.status == 200 and response.headers["X-Gateway-Attempts"] == "2"
    assert vendor.received[1].at - vendor.received[0].at >= 0.95
    assert int(response.headers["RateLimit-Remaining"]) >= 97  # as it went, not as it queued


async def test_the_vendors_own_counters_lower_ours(gateway, vendor):
    vendor.script(answer(200, headers={"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "2"}))
    follow = {"remaining": "X-RateLimit-Remaining", "reset": "X-RateLimit-Reset"}
    client = await gateway(policy(vendor, {"name": "daily", "limit": 1000, "per": "1d", "window": "fixed", "follow": follow}))
    assert (await client.get("/v/x")).status == 200
    refused = await client.get("/v/x")  # the vendor has nothing left for 2 s
    assert refused.status == 429 and refused.headers["Retry-After"] == "2"
    await asyncio.sleep(2.05)
    vendor.script(answer(200, headers={"X-RateLimit-Remaining": "2"}))  # no reset: it lasts our day
    response = await client.get("/v/x")
    assert response.status == 200 and response.headers["RateLimit-Remaining"] == "2"
    assert sorted(r.status for r in await burst(client, 3)) == [200, 200, 429]
    assert len(vendor.received) == 4


async def test_a_shadow_budget_counts_but_never_refuses(gateway, vendor):
    client = await gateway(policy(vendor, {"name": "credits", "limit": 2, "per": "1d", "window": "fixed", "shadow": True}))
    assert [r.status for r in await burst(client, 4)] == [200] * 4
    samples = metric_samples(await (await client.get("/metrics")).text())
    assert samples[("gateway_budget_exhausted_total", (("budget", "credits"), ("vendor", "v")))] == 2
    assert samples[("gateway_budget_remaining", (("budget", "credits"), ("vendor", "v")))] == 0


async def test_metrics_and_status_report_the_budgets(gateway, vendor):
    client = await gateway(
        policy(
            vendor,
            {"name": "burst", "limit": 2, "per": "10s"},
            {"name": "per-caller", "limit": 50, "per": "1h", "key": "caller", "window": "rolling"},
            wait="10s",
        ),
        config={"callers": CALLERS, "admin_key": "${ADMIN}"},
        env={**KEYS, "ADMIN": "admin-key-123"},
    )
    await burst(client, 3, headers={"X-Gateway-Key": "batch-key-123"}, params={})
    samples = metric_samples(await (await client.get("/metrics", headers={"X-Gateway-Admin-Key": "admin-key-123"})).text())
    assert samples[("gateway_budget_exhausted_total", (("budget", "burst"), ("vendor", "v")))] == 1
    assert samples[("gateway_budget_wait_seconds_count", (("vendor", "v"),))] == 3
    assert samples[("gateway_budget_wait_seconds_bucket", (("le", "0.0"), ("vendor", "v")))] == 2
    status = await (await client.get("/_gateway/status", headers={"X-Gateway-Admin-Key": "admin-key-123"})).json()
    burst_status, caller_status = status["vendors"]["v"]["budgets"]
    assert burst_status["name"] == "burst" and burst_status["limit"] == 2 and burst_status["remaining"] == 0
    assert 0 < burst_status["reset"] <= 15
    assert caller_status["callers"]["batch"]["remaining"] == 47
    assert caller_status["callers"]["router"]["remaining"] == 50


@pytest.mark.parametrize("how", ["in-process", "serve"])
async def test_a_waiter_whose_caller_leaves_gives_its_place_back(gateway, gateway_process, vendor, how):
    # One request a minute: the waiter's turn comes a minute on, and every check below has
    # all of that time to see it hold its place, then give it back.
    p = policy(vendor, {"name": "burst", "limit": 1, "per": "60s"}, wait="120s")
    # An in-process test server cancels the handler of a caller that left; `gateway serve`
    # does not, and the waiting request notices on its own.
    if how == "in-process":
        client = await gateway(p)
        port = client.port
    else:
        proc = gateway_process(p)
        client = aiohttp.ClientSession(proc.url)
        port = proc.port
    assert (await client.get("/v/x")).status == 200
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /v/x HTTP/1.1\r\nHost: gateway\r\n\r\n")  # reserved for a minute from now

    async def next_turn_once(condition):
        deadline = time.monotonic() + 30
        while True:
            probe = await client.get("/v/x", headers={"X-Gateway-Max-Wait": "0"})
            retry_after = int(probe.headers["Retry-After"])
            if condition(retry_after) or time.monotonic() > deadline:
                return retry_after
            await asyncio.sleep(0.05)

    await writer.drain()
    assert await next_turn_once(lambda s: s > 60) > 60  # behind the waiter
    writer.close()  # the caller gives up
    assert await next_turn_once(lambda s: s <= 60) <= 60  # the gateway notices within its 0.25 s check
    assert len(vendor.received) == 1
    if how == "serve":
        await client.close()


async def test_two_gateways_on_one_redis_share_the_budget(gateway, vendor, redis_server):
    p = policy(vendor, {"name": "burst", "limit": 6, "per": "60s"})
    a = await gateway(p, config={"storage": redis_server.url})
    b = await gateway(p, config={"storage": redis_server.url})
    answers = await asyncio.gather(burst(a, 5), burst(b, 5))
    assert sorted(r.status for pair in answers for r in pair) == [200] * 6 + [429] * 4
    assert len(vendor.received) == 6


async def test_two_gateway_processes_share_the_budget(gateway_process, vendor, redis_server):
    p = policy(vendor, {"name": "burst", "limit": 8, "per": "60s"})
    procs = [gateway_process(p, config={"storage": redis_server.url}) for _ in range(2)]
    async with aiohttp.ClientSession() as session:
        async def one(proc):
            async with session.get(f"{proc.url}/v/x") as response:
                return response.status

        statuses = await asyncio.gather(*(one(proc) for proc in procs for _ in range(6)))
    assert sorted(statuses) == [200] * 8 + [429] * 4
    assert len(vendor.received) == 8


async def test_budgets_keep_limiting_locally_while_redis_is_down_and_share_again_after(gateway, vendor, redis_server):
    client = await gateway(policy(vendor, {"name": "burst", "limit": 3, "per": "60s"}), config={"storage": redis_server.url})
    assert (await client.get("/v/x")).status == 200
    redis_server.stop()
    started = time.monotonic()
    statuses = [r.status for r in await burst(client, 5)]
    assert time.monotonic() - started < 5  # one short timeout, then the fallback answers at once
    assert statuses.count(200) == 2 and statuses.count(429) == 3  # it goes on from where Redis was
    assert (await (await client.get("/readyz")).json())["fallback"] == "local"
    samples = metric_samples(await (await client.get("/metrics")).text())
    assert samples[("gateway_storage_fallback", ())] == 1
    redis_server.start()  # a new, empty Redis
    assert (await (await client.get("/readyz")).json()).get("fallback") is None
    samples = metric_samples(await (await client.get("/metrics")).text())
    assert samples[("gateway_storage_fallback", ())] == 0  # the probe's answer ends the fallback
    # Shared again, and the new Redis is given what was counted: by Redis, and by the fallback.
    assert [r.status for r in await burst(client, 3)] == [429] * 3
    assert len(vendor.received) == 3


async def test_reject_answers_503_while_redis_is_down(gateway, vendor, redis_server):
    config = {"storage": redis_server.url, "on_storage_error": "reject"}
    client = await gateway(policy(vendor, {"name": "burst", "limit": 3, "per": "60s"}), config=config)
    redis_server.stop()
    response = await client.get("/v/x")
    assert response.status == 503 and response.headers["Retry-After"] == "1"
    assert (await response.json())["type"] == "storage-unavailable"
    assert vendor.received == []


async def test_allow_passes_unlimited_while_redis_is_down(gateway, vendor, redis_server):
    config = {"storage": redis_server.url, "on_storage_error": "allow"}
    client = await gateway(policy(vendor, {"name": "burst", "limit": 1, "per": "60s"}), config=config)
    redis_server.stop()
    assert [r.status for r in await burst(client, 3)] == [200] * 3


async def test_budgets_work_on_a_redis_cluster(gateway, vendor, redis_cluster):
    config = {"storage": redis_cluster.url, "redis_cluster": True}
    p = policy(vendor, {"name": "burst", "limit": 4, "per": "60s"}, {"name": "daily", "limit": 100, "per": "1d", "window": "rolling"})
    a = await gateway(p, config=config)
    b = await gateway(p, config=config)
    answers = await asyncio.gather(burst(a, 3), burst(b, 3))
    assert sorted(r.status for pair in answers for r in pair) == [200] * 4 + [429] * 2
    assert (await (await a.get("/readyz")).json())["status"] == "ready"


async def test_a_request_that_never_reached_the_vendor_costs_no_budget(gateway):
    from tests.conftest import free_port

    closed = f"http://127.0.0.1:{free_port()}"
    client = await gateway({"vendor": "v", "upstream": closed, "budgets": [{"name": "burst", "limit": 1, "per": "60s"}]})
    assert [(await client.get("/v/x")).status for _ in range(3)] == [502, 502, 502]


def test_a_rolling_quota_outlasts_its_window_by_the_slowest_answer_while_it_counts():
    from gateway.budgets import SlowestAnswer

    slowest = SlowestAnswer()
    assert slowest.longest(1000.0, 60) is None  # unknown: the budget assumes the most
    slowest.observe(0.2, 1000.0)
    slowest.observe(0.05, 1030.0)
    assert slowest.longest(1030.0, 60) == 0.2
    assert slowest.longest(1075.0, 60) == 0.05  # a minute later the slow one is forgotten
    assert slowest.longest(1200.0, 60) is None
    assert slowest.longest(1200.0, 3600) == 0.2  # but not by an hour-long quota


async def test_after_redis_restarts_the_budgets_are_shared_again_at_once(gateway, vendor, redis_server):
    p = policy(vendor, {"name": "burst", "limit": 100, "per": "1s"})
    a = await gateway(p, config={"storage": redis_server.url})
    b = await gateway(p, config={"storage": redis_server.url})
    await asyncio.gather(burst(a, 10), burst(b, 10))  # several pooled connections in each
    redis_server.stop()
    redis_server.start()  # every pooled connection is now dead
    vendor.script(answer(429, headers={"Retry-After": "5"}))
    assert (await a.get("/v/x")).status == 429  # the vendor's: it pauses the budget...
    answers = await burst(b, 3, headers={"X-Gateway-Max-Wait": "0"})
    assert [r.status for r in answers] == [429] * 3  # ...in the other gateway too
    assert [(await r.json())["type"] for r in answers] == ["budget-exhausted"] * 3
    samples = metric_samples(await (await b.get("/metrics")).text())
    assert samples[("gateway_storage_fallback", ())] == 0
