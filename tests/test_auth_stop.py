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


async def test_a_stop_another_gateway_starts_reaches_one_that_just_let_calls_through(gateway, vendor, redis_server):
    config = {"storage": redis_server.url}
    stop = {**STOP, "probe_every": "10m"}
    first = await gateway(policy(vendor, auth_failures=stop), config=config, env=ENV)
    second = await gateway(policy(vendor, auth_failures=stop), config=config, env=ENV)
    assert (await second.get("/v/x")).status == 200  # the key is taken: the second holds that a while
    vendor.script(401, 401, 401)
    assert [(await first.get("/v/x")).status for _ in range(3)] == [401, 401, 401]
    end = time.monotonic() + 15
    while (await second.get("/v/x")).status == 200:
        assert time.monotonic() < end, "the stop never reached the second gateway"
        await asyncio.sleep(0.1)
    await _stopped(second, vendor)


class _CountedAdmits:
    """A store that counts the admits asked of it."""

    def __init__(self, store):
        self._store, self.asked = store, 0
        self.health = store.health

    async def auth_stop_admit(self, vendor):
        self.asked += 1
        return await self._store.auth_stop_admit(vendor)

    def __getattr__(self, name):
        return getattr(self._store, name)


async def test_while_the_key_is_taken_storage_is_asked_once_a_second_not_per_request(settings_from, tmp_path):
    from gateway.auth_stops import HELD, AuthStops
    from gateway.errors import CredentialsRejected
    from gateway.metrics import Metrics
    from gateway.storage.memory import MemoryStorage

    [config] = settings_from({"vendor": "v", "upstream": "https://v.example", "auth_failures": STOP}).policies.values()
    now = [100.0]
    store = _CountedAdmits(MemoryStorage(tmp_path / "state"))
    stops = AuthStops(store, Metrics(), {"v": lambda: False}, clock=lambda: now[0])
    for _ in range(5):
        assert (await stops.admit(config)).allowed
    assert store.asked == 1
    now[0] += HELD
    assert (await stops.admit(config)).allowed and store.asked == 2

    for _ in range(3):  # another process's refusals, in the shared store
        await store.auth_stop_record("v", config.auth_failures, True, False)
    assert (await stops.admit(config)).allowed and store.asked == 2  # held: at most HELD old
    now[0] += HELD
    with pytest.raises(CredentialsRejected):
        await stops.admit(config)
    with pytest.raises(CredentialsRejected):
        await stops.admit(config)
    assert store.asked == 4  # while stopped every admit asks (the probe is shared)


async def test_a_refusal_seen_here_ends_the_holding_at_once(settings_from, tmp_path):
    from gateway.auth_stops import AuthStops
    from gateway.metrics import Metrics
    from gateway.storage.memory import MemoryStorage

    [config] = settings_from({"vendor": "v", "upstream": "https://v.example", "auth_failures": STOP}).policies.values()
    store = _CountedAdmits(MemoryStorage(tmp_path / "state"))
    stops = AuthStops(store, Metrics(), {"v": lambda: False}, clock=lambda: 100.0)
    admission = await stops.admit(config)
    await stops.record(config, admission, 401)
    assert (await stops.admit(config)).state == 1 and store.asked == 2  # counting: asked every time
    await stops.admit(config)
    assert store.asked == 3
