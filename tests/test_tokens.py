"""OAuth2 and JWT-bearer credentials: fetched once, refreshed ahead of expiry, shared,
rotation-safe, and never shown."""

import asyncio
import time

import aiohttp
import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from multidict import CIMultiDict

from gateway.config.model import OAuth2
from gateway.config.secrets import Secret
from gateway.core.tokens import TokenRecord
from gateway.errors import CredentialsUnavailable, StorageError
from gateway.metrics import Metrics
from gateway.token_encryption import Sealer
from gateway.storage.memory import MemoryStorage
from gateway.tokens import TokenProvider
from tests.mock_oauth import TokenServer

ENV = {"CLIENT_SECRET": "client-secret-1", "REFRESH": "refresh-0"}


@pytest.fixture
async def auth(aiohttp_server):
    server = TokenServer()
    running = await aiohttp_server(server.app())
    server.url = f"http://127.0.0.1:{running.port}"
    return server


def oauth_policy(auth, **credentials):
    return {
        "vendor": "crm",
        "upstream": auth.url + "/api",
        "credentials": {
            "type": "oauth2", "grant": "refresh_token", "token_url": auth.url + "/token",
            "client_id": "client-1", "client_secret": "${CLIENT_SECRET}", "refresh_token": "${REFRESH}",
            **credentials,
        },
    }


async def test_a_cold_start_under_40_concurrent_requests_makes_one_token_request(gateway, auth):
    client = await gateway(oauth_policy(auth), env=ENV)
    responses = await asyncio.gather(*(client.get("/crm/contacts") for _ in range(40)))
    assert [r.status for r in responses] == [200] * 40
    assert len(auth.requests) == 1
    assert auth.requests[0]["grant_type"] == "refresh_token" and auth.requests[0]["client_secret"] == "client-secret-1"


async def test_steady_traffic_with_3_second_tokens_never_meets_an_expired_token(gateway, auth):
    auth.lifetime = 3
    client = await gateway(oauth_policy(auth, refresh_before="1s"), env=ENV)
    statuses = []
    deadline = time.monotonic() + 7
    while time.monotonic() < deadline:
        batch = await asyncio.gather(*(client.get("/crm/x") for _ in range(5)))
        statuses += [r.status for r in batch]
        await asyncio.sleep(0.05)
    assert set(statuses) == {200}
    assert auth.rejected_401 == 0
    assert 3 <= len(auth.requests) <= 6  # one every ~1.5-2 s, beside the traffic


async def test_a_401_from_the_vendor_refreshes_once_and_retries_once(gateway, auth):
    client = await gateway(oauth_policy(auth), env=ENV)
    assert (await client.get("/crm/x")).status == 200
    auth.revoke_access_tokens()
    response = await client.get("/crm/x")
    assert response.status == 200 and response.headers["X-Gateway-Attempts"] == "2"
    assert len(auth.requests) == 2 and auth.rejected_401 == 1


async def test_a_second_401_goes_to_the_caller(gateway, auth, vendor):
    vendor.script(401, 401)
    policy = oauth_policy(auth)
    policy["upstream"] = vendor.url
    client = await gateway(policy, env=ENV)
    response = await client.get("/crm/x")
    assert response.status == 401
    assert len(vendor.received) == 2 and len(auth.requests) == 2


async def test_a_refused_grant_fails_fast_without_touching_the_vendor(gateway, auth, vendor):
    auth.live_refresh_tokens.clear()
    policy = oauth_policy(auth)
    policy["upstream"] = vendor.url
    client = await gateway(policy, env=ENV)
    started = time.monotonic()
    responses = [await client.get("/crm/x") for _ in range(5)]
    assert time.monotonic() - started < 10  # none waits out the 30 s before the next try
    for response in responses:
        assert response.status == 503
        problem = await response.json()
        assert problem["type"] == "credentials-unavailable" and "invalid_grant" in problem["detail"]
        assert 25 <= int(response.headers["Retry-After"]) <= 30
    assert vendor.received == [] and len(auth.requests) == 1
    text = await (await client.get("/metrics")).text()
    assert 'gateway_credential_refreshes_total{result="error",vendor="crm"} 1.0' in text
    status = await (await client.get("/_gateway/status")).json()
    assert status["vendors"]["crm"]["credentials"]["state"] == "failing"


async def test_recovery_after_a_refused_grant_is_automatic(tmp_path, auth):
    spec = OAuth2(
        grant="refresh_token", token_url=auth.url + "/token", client_id="client-1",
        client_secret=Secret("client-secret-1", "${S}"), refresh_token=Secret("refresh-0", "${R}"),
        scope=None, auth_method="client_secret_post", refresh_before=300.0,
    )
    now = [time.time()]
    auth.live_refresh_tokens.clear()
    async with aiohttp.ClientSession() as session:
        provider = TokenProvider("crm", spec, MemoryStorage(tmp_path), session, Sealer(None), Metrics(),
                                 clock=lambda: now[0])
        with pytest.raises(CredentialsUnavailable):
            await provider.apply(CIMultiDict(), None)
        auth.live_refresh_tokens.add("refresh-0")  # the operator fixed the grant
        now[0] += 10
        with pytest.raises(CredentialsUnavailable):  # still backing off: no new token request
            await provider.apply(CIMultiDict(), None)
        assert len(auth.requests) == 1
        now[0] += 25
        headers: CIMultiDict[str] = CIMultiDict()
        await provider.apply(headers, None)
        assert headers["Authorization"].startswith("Bearer access-")
        assert provider.status()["state"] == "valid"


async def test_client_secret_basic_and_client_credentials(gateway, auth):
    auth.auth_method = "client_secret_basic"
    auth.client_secret = "s3cret:with/odd+chars"
    policy = oauth_policy(auth, grant="client_credentials", auth_method="client_secret_basic", scope="crm.read")
    del policy["credentials"]["refresh_token"]
    client = await gateway(policy, env={"CLIENT_SECRET": "s3cret:with/odd+chars"})
    assert (await client.get("/crm/x")).status == 200
    [request] = auth.requests
    assert request["grant_type"] == "client_credentials" and request["scope"] == "crm.read"
    assert "client_secret" not in request and request["authorization"].startswith("Basic ")


@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
async def test_jwt_bearer_assertions_verify_with_the_public_key(gateway, auth, algorithm):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048) if algorithm == "RS256" else ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    auth.public_key = key.public_key()
    policy = {
        "vendor": "zi", "upstream": auth.url + "/api",
        "credentials": {"type": "jwt_bearer", "token_url": auth.url + "/token", "issuer": "svc@example",
                        "subject": "user@example", "audience": auth.audience, "private_key": "${KEY}",
                        "algorithm": algorithm, "lifetime": "3m"},
    }
    client = await gateway(policy, env={"KEY": pem})
    assert (await client.get("/zi/x")).status == 200
    [request] = auth.requests
    assert request["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer"
    claims = jwt.decode(request["assertion"], key.public_key(), algorithms=[algorithm], audience=auth.audience)
    assert (claims["iss"], claims["sub"]) == ("svc@example", "user@example")
    assert claims["exp"] - claims["iat"] == 180 and claims["jti"]


async def test_an_unusable_private_key_is_a_clear_503(gateway, auth):
    policy = {
        "vendor": "zi", "upstream": auth.url + "/api",
        "credentials": {"type": "jwt_bearer", "token_url": auth.url + "/token", "issuer": "i",
                        "audience": "a", "private_key": "${KEY}"},
    }
    client = await gateway(policy, env={"KEY": "not-a-pem-key"})
    response = await client.get("/zi/x")
    assert response.status == 503
    body = await response.text()
    assert "private_key cannot sign RS256" in body and "not-a-pem-key" not in body
    assert auth.requests == []


async def test_a_restart_resumes_with_the_rotated_refresh_token(gateway_process, auth, tmp_path):
    auth.lifetime = 2
    policy = oauth_policy(auth, refresh_before="1s")
    config = {"data_dir": str(tmp_path / "state")}
    first = gateway_process(policy, config=config, env=ENV)
    async with aiohttp.ClientSession() as session:
        assert (await session.get(first.url + "/crm/x")).status == 200
        await asyncio.to_thread(first.stop)
        assert "refresh-0" not in auth.live_refresh_tokens  # rotated: the configured one is dead
        await asyncio.sleep(2.2)  # the stored access token expires too
        second = gateway_process(policy, config=config, env=ENV)
        assert (await session.get(second.url + "/crm/x")).status == 200
    assert all(r["refresh_token"] != "refresh-0" for r in auth.requests[1:])
    code, output = await asyncio.to_thread(second.stop)
    assert "invalid_grant" not in output and "refresh-" not in output and "access-" not in output


async def test_two_processes_share_tokens_and_rotation_without_a_failed_request(gateway_process, auth, redis_server):
    auth.lifetime = 3
    policy = oauth_policy(auth, refresh_before="1s")
    config = {"storage": redis_server.url, "secret_key": "${SECRET_KEY}"}
    env = {**ENV, "SECRET_KEY": "gateway-secret-key"}
    processes = [gateway_process(policy, config=config, env=env) for _ in range(2)]
    statuses = []
    async with aiohttp.ClientSession() as session:
        async def hammer(url):
            deadline = time.monotonic() + 8
            while time.monotonic() < deadline:
                async with session.get(url + "/crm/x") as response:
                    statuses.append(response.status)
                await asyncio.sleep(0.02)

        await asyncio.gather(*(hammer(p.url) for p in processes for _ in range(4)))
    assert len(statuses) > 200 and set(statuses) == {200}
    assert auth.rejected_401 == 0
    refreshes = [r for r in auth.requests]
    assert len(refreshes) <= 8, len(refreshes)  # shared: about one per 1.5-2 s, not one per process
    raw = await _redis_values(redis_server.url)
    assert raw and all(b"access-" not in value and b"refresh-" not in value for value in raw)


async def _redis_values(url):
    import redis.asyncio as aioredis

    client = aioredis.from_url(url)
    try:
        keys = await client.keys("gateway:*:token")
        return [await client.get(k) for k in keys]
    finally:
        await client.aclose()


async def test_token_secrets_never_reach_status_metrics_or_logs(gateway, auth, caplog):
    caplog.set_level("DEBUG")
    client = await gateway(oauth_policy(auth), env=ENV)
    await client.get("/crm/x")
    auth.revoke_access_tokens()
    await client.get("/crm/x")
    outputs = [await (await client.get(path)).text() for path in ("/_gateway/status", "/metrics")]
    outputs += [r.getMessage() for r in caplog.records]
    for output in outputs:
        for secret in ("client-secret-1", "refresh-", "access-"):
            assert secret not in output, (secret, output)
    status = await (await client.get("/_gateway/status")).json()
    assert status["vendors"]["crm"]["credentials"]["state"] == "valid"
    assert status["vendors"]["crm"]["credentials"]["expires_at"].endswith("Z")


async def test_a_failing_token_endpoint_does_not_touch_callers_while_the_token_is_valid(gateway, auth):
    # An 8-second token is refreshed at 4 s and sent until 7 s: the refresh fails at 4 s and
    # is retried at 5 s, and the requests between have seconds to spare.
    auth.lifetime = 8
    client = await gateway(oauth_policy(auth, refresh_before="4s"), env=ENV)
    assert (await client.get("/crm/x")).status == 200
    auth.fail_next(500, "server_error")

    async def statuses_until(condition):
        statuses = []
        deadline = time.monotonic() + 30
        while not condition() and time.monotonic() < deadline:
            statuses.append((await client.get("/crm/x")).status)
            await asyncio.sleep(0.1)
        return statuses

    assert set(await statuses_until(lambda: len(auth.requests) >= 2)) <= {200}  # until the refresh fails
    assert [(await client.get("/crm/x")).status for _ in range(3)] == [200] * 3  # and after
    assert set(await statuses_until(lambda: len(auth.requests) >= 3)) <= {200}  # retried, successfully
    assert (await client.get("/crm/x")).status == 200
    assert len(auth.requests) == 3 and auth.rejected_401 == 0
    text = await (await client.get("/metrics")).text()
    assert 'gateway_credential_refreshes_total{result="error",vendor="crm"} 1.0' in text


class FlakyStorage(MemoryStorage):
    """Memory storage whose token calls can be made to fail, like a Redis blip.
    ``fail_link_puts``: how many of the next writes of a new link (not of a mark) fail."""

    def __init__(self, path):
        super().__init__(path)
        self.down = False
        self.fail_link_puts = 0

    async def get_token(self, vendor):
        if self.down:
            raise StorageError("redis read failed: ConnectionError")
        return await super().get_token(vendor)

    async def lock_refresh(self, vendor, ttl):
        if self.down:
            raise StorageError("redis lock failed: ConnectionError")
        return await super().lock_refresh(vendor, ttl)

    async def put_token(self, vendor, value, previous):
        if self.down:
            raise StorageError("redis write failed: ConnectionError")
        if self.fail_link_puts and not orjson.loads(Sealer(None).open(value))["rotating_by"]:
            self.fail_link_puts -= 1
            raise StorageError("redis write failed: TimeoutError")
        return await super().put_token(vendor, value, previous)


def refresh_spec(auth):
    return OAuth2(
        grant="refresh_token", token_url=auth.url + "/token", client_id="client-1",
        client_secret=Secret("client-secret-1", "${S}"), refresh_token=Secret("refresh-0", "${R}"),
        scope=None, auth_method="client_secret_post", refresh_before=1.0,
    )


async def test_a_store_failure_after_a_rotation_does_not_lose_the_chain(tmp_path, auth):
    storage = FlakyStorage(tmp_path)
    async with aiohttp.ClientSession() as session:
        provider = TokenProvider("crm", refresh_spec(auth), storage, session, Sealer(None), Metrics())
        storage.fail_link_puts = 1
        headers: CIMultiDict[str] = CIMultiDict()
        await provider.apply(headers, None)  # refresh-0 -> refresh-1, not stored
        await provider.rejected(headers)  # the vendor refuses it: the next link comes from refresh-1
        assert [r["refresh_token"] for r in auth.requests] == ["refresh-0", "refresh-1"]
        stored = TokenRecord.from_json(orjson.loads(Sealer(None).open(await storage.get_token("crm"))))
        assert stored.refresh_token in auth.live_refresh_tokens


async def test_with_the_store_down_the_configured_refresh_token_is_not_replayed(tmp_path, auth):
    storage = FlakyStorage(tmp_path)
    storage.down = True
    async with aiohttp.ClientSession() as session:
        provider = TokenProvider("crm", refresh_spec(auth), storage, session, Sealer(None), Metrics())
        with pytest.raises(CredentialsUnavailable) as info:
            await provider.apply(CIMultiDict(), None)
        assert info.value.retry_after is not None and info.value.retry_after <= 1
        assert auth.requests == []


async def test_a_vendor_that_refuses_every_token_does_not_get_a_refresh_per_request(gateway, auth, vendor):
    policy = oauth_policy(auth)
    policy["upstream"] = vendor.url
    policy["auth_failures"] = {"statuses": []}  # the auth stop would end the calls after 3 (tests/test_auth_stop.py)
    vendor.script(*([401] * 40))
    client = await gateway(policy, env=ENV)
    statuses = [(await client.get("/crm/x")).status for _ in range(20)]
    assert statuses == [401] * 20
    assert len(auth.requests) == 2  # the first token, and one refresh after the first 401


async def test_no_token_endpoint_is_called_before_the_vendor_is_used(gateway, auth):
    client = await gateway(oauth_policy(auth), env=ENV)
    await asyncio.sleep(0.3)
    assert auth.requests == []
    assert (await client.get("/crm/x")).status == 200 and len(auth.requests) == 1
