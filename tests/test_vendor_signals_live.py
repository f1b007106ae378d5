"""A budget that follows a vendor's own signal, against a scripted vendor: what the vendor
says is left lowers the budget, its quota refusals pause it."""

import json
import logging

import pytest

from tests.mock_vendor import answer
from tests.test_budgets import policy


async def _calls_until_refused(client, vendor, most=10):
    """Requests until the gateway refuses one; (the requests the vendor got, that answer)."""
    before = len(vendor.received)
    for _ in range(most):
        got = await client.get("/v/x")
        if got.status == 429 and (await got.json())["type"] == "budget-exhausted":
            return len(vendor.received) - before, got
    raise AssertionError(f"never refused in {most} requests")


async def _status(client):
    return (await (await client.get("/_gateway/status")).json())["vendors"]["v"]


async def test_salesforce_usage_near_its_limit_leaves_what_the_vendor_says(gateway, vendor):
    daily = {"name": "daily", "limit": 100000, "per": "1d", "window": "rolling", "follow": "salesforce-daily"}
    client = await gateway(policy(vendor, daily))
    vendor.script(answer(200, b"{}", {"Sforce-Limit-Info": "api-usage=99998/100000; api-bursts=3/10"}))
    assert (await client.get("/v/x")).status == 200
    sent, refused = await _calls_until_refused(client, vendor)
    assert sent <= 2
    assert int(refused.headers["Retry-After"]) >= 1


async def test_a_salesforce_request_limit_403_pauses_the_budget_not_the_credential(gateway, vendor):
    daily = {"name": "daily", "limit": 100000, "per": "1d", "window": "rolling", "follow": "salesforce-daily"}
    body = json.dumps([{"errorCode": "REQUEST_LIMIT_EXCEEDED", "message": "TotalRequests Limit exceeded."}])
    client = await gateway(policy(
        vendor, daily,
        auth_failures={"statuses": [401, 403], "after": 1, "probe_every": "1s"},
        circuit_breaker={"min_calls": 1, "failure_ratio": 0.1, "window": "1m", "open_for": "1m"},
    ))
    vendor.script(answer(403, body.encode(), {"Content-Type": "application/json"}))
    first = await client.get("/v/sobjects")
    assert first.status == 403 and json.loads(await first.read()) == json.loads(body)  # the whole answer
    second = await client.get("/v/sobjects")
    assert second.status == 429 and (await second.json())["type"] == "budget-exhausted"
    assert int(second.headers["Retry-After"]) >= 60
    assert len(vendor.received) == 1
    status = await _status(client)
    assert status["credentials"]["state"] == "static"
    assert status["circuit_breaker"] == "closed"


async def test_hubspot_interval_remaining_lowers_the_burst_budget(gateway, vendor):
    burst = {"name": "burst", "limit": 100, "per": "10s", "follow": "hubspot-interval"}
    client = await gateway(policy(vendor, burst))
    vendor.script(answer(200, b"{}", {
        "X-HubSpot-RateLimit-Remaining": "1", "X-HubSpot-RateLimit-Max": "100",
        "X-HubSpot-RateLimit-Interval-Milliseconds": "10000",
    }))
    assert (await client.get("/v/x")).status == 200
    sent, refused = await _calls_until_refused(client, vendor)
    assert sent <= 1 and 1 <= int(refused.headers["Retry-After"]) <= 10


async def test_hubspot_daily_remaining_and_its_daily_429(gateway, vendor):
    daily = {"name": "daily", "limit": 250000, "per": "1d", "window": "fixed", "reset": "00:00",
             "timezone": "UTC", "follow": "hubspot-daily"}
    client = await gateway(policy(vendor, daily))
    vendor.script(answer(200, b"{}", {"X-HubSpot-RateLimit-Daily-Remaining": "1", "X-HubSpot-RateLimit-Daily": "250000"}))
    assert (await client.get("/v/x")).status == 200
    sent, _ = await _calls_until_refused(client, vendor)
    assert sent <= 1

    other = {**daily, "name": "daily2"}
    client = await gateway(policy(vendor, other))
    refusal = b'{"status": "error", "errorType": "RATE_LIMIT", "policyName": "DAILY", "message": "daily limit"}'
    vendor.script(answer(429, refusal, {"Content-Type": "application/json"}))
    first = await client.get("/v/x")
    assert first.status == 429 and await first.read() == refusal
    calls = len(vendor.received)
    refused = await client.get("/v/x")
    assert refused.status == 429 and (await refused.json())["type"] == "budget-exhausted"
    assert len(vendor.received) == calls
    budget = (await _status(client))["budgets"][0]
    # Paused until the window's end (midnight UTC), as its reset says.
    assert abs(budget["paused_for"] - budget["reset"]) <= 5
    assert int(refused.headers["Retry-After"]) >= min(60, budget["reset"] - 5)


async def test_an_ietf_ratelimit_of_none_left_holds_until_its_reset(gateway, vendor):
    burst = {"name": "burst", "limit": 100, "per": "1m", "follow": "ietf"}
    client = await gateway(policy(vendor, burst))
    vendor.script(answer(200, b"{}", {"RateLimit": '"default";r=0;t=5', "RateLimit-Policy": '"default";q=100;w=60'}))
    assert (await client.get("/v/x")).status == 200
    sent, refused = await _calls_until_refused(client, vendor)
    assert sent == 0 and 4 <= int(refused.headers["Retry-After"]) <= 6


async def test_apollo_none_left_today_stops_the_day_budget(gateway, vendor):
    day = {"name": "day", "limit": 2000, "per": "1d", "window": "rolling", "follow": "apollo-day"}
    client = await gateway(policy(vendor, day))
    vendor.script(answer(200, b"{}", {"x-24-hour-requests-left": "0", "x-minute-requests-left": "50"}))
    assert (await client.get("/v/x")).status == 200
    sent, _ = await _calls_until_refused(client, vendor)
    assert sent == 0


async def test_several_signals_and_a_retry_after_the_strictest_wins(gateway, vendor):
    burst = {"name": "burst", "limit": 100, "per": "1m", "follow": "ietf"}
    other = {"name": "other", "limit": 100, "per": "1m", "follow": "x-ratelimit"}
    client = await gateway(policy(vendor, burst, other))
    vendor.script(answer(429, b"{}", {
        "Retry-After": "2",
        "RateLimit": '"default";r=0;t=30',  # the strictest: nothing for 30 s
        "X-RateLimit-Remaining": "5", "X-RateLimit-Reset": "10",
    }))
    assert (await client.get("/v/x")).status == 429
    sent, refused = await _calls_until_refused(client, vendor)
    assert sent == 0 and int(refused.headers["Retry-After"]) >= 25
    budgets = {b["name"]: b for b in (await _status(client))["budgets"]}
    assert budgets["other"]["remaining"] <= 5


async def test_refund_on_gives_a_refused_requests_charge_back(gateway, vendor):
    minute = {"name": "minute", "limit": 2, "per": "1m", "window": "rolling"}
    client = await gateway(policy(vendor, minute, refund_on=[429]))
    vendor.script(429, 429)
    assert [(await client.get("/v/x")).status for _ in range(4)] == [429, 429, 200, 200]
    assert len(vendor.received) == 4


# A bucket's charges are made once per policy and caller (Budgets.charges_for): a limit
# learnt must make them afresh.
@pytest.mark.parametrize("window", [{"window": "rolling"}, {}], ids=["rolling", "bucket"])
async def test_a_smaller_vendor_limit_lowers_the_budget_and_says_so_once(gateway, vendor, caplog, window):
    caplog.set_level(logging.WARNING, "gateway.budgets")
    minute = {"name": "minute", "limit": 100, "per": "1m", **window, "follow": "x-ratelimit"}
    client = await gateway(policy(vendor, minute))
    said = {"X-RateLimit-Limit": "3", "X-RateLimit-Remaining": "50"}
    vendor.script(answer(200, b"{}", said), answer(200, b"{}", said))
    assert (await client.get("/v/x")).status == 200
    sent, _ = await _calls_until_refused(client, vendor)
    assert sent <= 2  # 3 a minute, not 100
    warned = [r for r in caplog.records if "under the policy's 100" in r.getMessage()]
    assert len(warned) == 1
