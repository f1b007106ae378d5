"""A vendor refusing our credential again and again stops the calls to it (the auth stop):
503 credentials-rejected without reaching the vendor, one probe now and then."""

import asyncio
import time

import pytest

from tests.test_budgets import metric_samples

KEY = {"type": "api_key", "header": "X-Api-Key", "value": "${API_KEY}"}
ENV = {"API_KEY": "revoked"}
STOP = {"statuses": [401], "after": 3, "probe_every": "1s"}


def policy(vendor, **rest):
    return {"vendor": "v", "upstream": vendor.url, "credentials": KEY, "auth_failures": STOP, **rest}


async def _credentials(client):
    return (await (await client.get("/_gateway/status")).json())["vendors"]["v"]["credentials"]


async def _until_through(client, vendor, deadline=15.0):
    """Requests until one reaches the vendor (the probe); its answer."""
    calls, end = len(vendor.received), time.monotonic() + deadline
    while time.monotonic() < end:
        got = await client.get("/v/x")
        if len(vendor.received) > calls:
            return got
        assert got.status == 503 and (await got.json())["type"] == "credentials-rejected"
        await asyncio.sleep(0.1)
    raise AssertionError("no probe went through")


async def _stopped(client, vendor):
    calls = len(vendor.received)
    refused = await client.get("/v/x")
    assert refused.status == 503 and (await refused.json())["type"] == "credentials-rejected"
    assert int(refused.headers["Retry-After"]) >= 1
    assert len(vendor.received) == calls


async def test_a_refused_key_stops_the_calls_then_probes_until_it_is_taken(gateway, vendor):
    client = await gateway(policy(vendor, dead_letter=True), env=ENV)
    vendor.script(401, 401, 401, 401)
    assert [(await client.get("/v/x")).status for _ in range(3)] == [401, 401, 401]
    await _stopped(client, vendor)
    write = await client.post("/v/x", data=b"{}")
    assert write.status == 503
    credentials = await _credentials(client)
    assert credentials["state"] == "rejected" and credentials["next_probe_in"] <= 1
    samples = metric_samples(await (await client.get("/metrics")).text())
    assert samples[("gateway_credential_state", (("vendor", "v"),))] == 2
    assert samples[("gateway_dead_letters", (("vendor", "v"),))] == 1  # the refused write
    assert len(vendor.received) == 3

    started = time.monotonic()
    probe = await _until_through(client, vendor)
    assert probe.status == 401  # its answer goes to its caller
    await _stopped(client, vendor)
    probe = await _until_through(client, vendor)  # after twice the interval
    assert probe.status == 200 and time.monotonic() - started >= 2.5
    assert (await client.get("/v/x")).status == 200
    assert (await _credentials(client))["state"] == "static"
    samples = metric_samples(await (await client.get("/metrics")).text())
    assert samples[("gateway_credential_state", (("vendor", "v"),))] == 0
    assert len(vendor.received) == 6


async def test_an_answer_that_is_no_refusal_starts_the_count_again(gateway, vendor):
    client = await gateway(policy(vendor), env=ENV)
    vendor.script(401, 401, 200, 401, 401)
    assert [(await client.get("/v/x")).status for _ in range(6)] == [401, 401, 200, 401, 401, 200]


async def test_the_stop_is_shared_by_gateways_on_one_redis(gateway, vendor, redis_server):
    config = {"storage": redis_server.url}
    first = await gateway(policy(vendor, auth_failures={**STOP, "probe_every": "10m"}), config=config, env=ENV)
    second = await gateway(policy(vendor, auth_failures={**STOP, "probe_every": "10m"}), config=config, env=ENV)
    vendor.script(401, 401, 401)
    assert [(await first.get("/v/x")).status for _ in range(3)] == [401, 401, 401]
    await _stopped(second, vendor)
    assert (await _credentials(second))["state"] == "rejected"


async def test_the_stop_survives_a_restart_in_embedded_mode(gateway, vendor, tmp_path):
    stop = {**STOP, "probe_every": "10m"}
    client = await gateway(policy(vendor, auth_failures=stop), env=ENV)
    vendor.script(401, 401, 401)
    assert [(await client.get("/v/x")).status for _ in range(3)] == [401, 401, 401]
    await client.close()  # a clean stop: the kept state is written
    restarted = await gateway(policy(vendor, auth_failures=stop), env=ENV)
    await _stopped(restarted, vendor)
    assert (await _credentials(restarted))["state"] == "rejected"


@pytest.mark.parametrize("statuses", [[]])
async def test_no_statuses_never_stops(gateway, vendor, statuses):
    client = await gateway(policy(vendor, auth_failures={**STOP, "statuses": statuses}), env=ENV)
    vendor.script(*([401] * 5))
    assert [(await client.get("/v/x")).status for _ in range(5)] == [401] * 5
