"""A vendor's pause (a 429 with Retry-After) holds budgets back without spending them."""

import asyncio
import time

import pytest

from tests.mock_vendor import answer
from tests.test_budgets import metric_samples, policy

BUDGETS = (
    {"name": "burst", "limit": 100, "per": "10s"},
    {"name": "daily", "limit": 1000, "per": "1d", "window": "rolling"},
    {"name": "search", "limit": 50, "per": "1m", "match": {"methods": ["POST"], "path": "/search"}},
)


def rate_limit(response):
    """The RateLimit field as {budget: (r, t)}."""
    out = {}
    for item in response.headers["RateLimit"].split(", "):
        name, r, t = item.split(";")
        out[name.strip('"')] = (int(r[2:]), int(t[2:]))
    return out


async def _status(client):
    budgets = (await (await client.get("/_gateway/status")).json())["vendors"]["v"]["budgets"]
    return {b["name"]: b for b in budgets}


@pytest.mark.parametrize("storage", ["memory", "redis"])
async def test_a_vendor_pause_holds_the_budgets_back_without_spending_them(gateway, vendor, redis_server, storage):
    config = {"storage": redis_server.url if storage == "redis" else "memory"}
    client = await gateway(policy(vendor, *BUDGETS), config=config)
    vendor.script(answer(429, headers={"Retry-After": "2"}))
    assert (await client.get("/v/x")).status == 429  # the vendor's own

    during = await client.post("/v/search", data=b"{}")
    assert during.status == 429 and (await during.json())["type"] == "budget-exhausted"
    shown = rate_limit(during)
    assert shown["burst"][0] == 0 and 1 <= shown["burst"][1] <= 2
    assert shown["daily"][0] == 0 and 1 <= shown["daily"][1] <= 2  # the pause, not the day
    assert shown["search"] == (50, 0)  # not charged by the paused request: not paused
    assert during.headers["RateLimit-Remaining"] == "0" and int(during.headers["RateLimit-Reset"]) <= 2

    status = await _status(client)
    assert status["daily"]["remaining"] == 999 and 0 < status["daily"]["paused_for"] <= 2
    assert status["burst"]["remaining"] == 99 and 0 < status["burst"]["paused_for"] <= 2
    assert "paused_for" not in status["search"]
    samples = metric_samples(await (await client.get("/metrics")).text())
    assert samples[("gateway_budget_remaining", (("budget", "daily"), ("vendor", "v")))] == 999

    deadline = time.monotonic() + 10
    while "paused_for" in (await _status(client))["daily"]:
        assert time.monotonic() < deadline, "the pause never ended"
        await asyncio.sleep(0.1)
    after = await client.get("/v/x")
    assert after.status == 200
    assert rate_limit(after)["daily"][0] == 998 and int(after.headers["RateLimit-Remaining"]) > 0
    assert "paused_for" not in (await _status(client))["daily"]
