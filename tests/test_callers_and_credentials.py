"""Callers authenticate to the gateway; the gateway authenticates to the vendor.
The two never mix: the caller's key stays here, the vendor's credential never shows."""

import base64

import pytest

CALLERS = [
    {"name": "router", "key": "${ROUTER_KEY}", "vendors": ["v"], "priority": "high"},
    {"name": "other", "key": "${OTHER_KEY}", "vendors": ["w"]},
    {"name": "ops", "key": "${OPS_KEY}", "vendors": ["*"]},
]
ENV = {"ROUTER_KEY": "router-key-1", "OTHER_KEY": "other-key-2", "OPS_KEY": "ops-key-3", "VENDOR_TOKEN": "vendor-tok-9"}


@pytest.fixture
async def client(gateway, vendor):
    return await gateway(
        {"vendor": "v", "upstream": vendor.url, "credentials": {"type": "bearer", "token": "${VENDOR_TOKEN}"}},
        {"vendor": "w", "upstream": vendor.url},
        config={"callers": CALLERS},
        env=ENV,
    )


async def test_a_known_key_in_either_header_is_let_through(client, vendor):
    assert (await client.get("/v/x", headers={"X-Gateway-Key": "router-key-1"})).status == 200
    assert (await client.get("/v/x", headers={"Authorization": "Bearer ops-key-3"})).status == 200
    for seen in vendor.received:
        assert seen.header("X-Gateway-Key") is None
        assert seen.header("Authorization") == "Bearer vendor-tok-9"


async def test_missing_or_wrong_keys_get_401_and_never_reach_the_vendor(client, vendor):
    for headers in ({}, {"X-Gateway-Key": "nope"}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic cm91dGVy"}):
        response = await client.get("/v/x", headers=headers)
        assert response.status == 401
        problem = await response.json()
        assert response.headers["Content-Type"] == "application/problem+json"
        assert problem["type"] == "unauthenticated" and problem["status"] == 401
    assert vendor.received == []


async def test_a_caller_outside_its_vendors_gets_403(client, vendor):
    response = await client.get("/v/x", headers={"X-Gateway-Key": "other-key-2"})
    assert response.status == 403
    assert (await response.json())["type"] == "forbidden"
    assert (await client.get("/w/x", headers={"X-Gateway-Key": "other-key-2"})).status == 200
    assert len(vendor.received) == 1


async def test_an_unknown_vendor_gets_404_problem(client):
    response = await client.get("/nobody/x", headers={"X-Gateway-Key": "ops-key-3"})
    assert response.status == 404
    assert await response.json() == {
        "type": "unknown-vendor", "title": "No policy for this vendor", "status": 404,
        "detail": "no vendor 'nobody' is configured at this path", "vendor": None,
    }


async def test_metrics_count_requests_per_caller(client):
    await client.get("/v/x", headers={"X-Gateway-Key": "router-key-1"})
    await client.get("/v/x", headers={"X-Gateway-Key": "wrong"})
    text = await (await client.get("/metrics", headers={"X-Gateway-Key": "router-key-1"})).text()
    assert 'gateway_requests_total{caller="router",method="GET",status="200",vendor="v"} 1.0' in text
    assert 'gateway_requests_total{caller="unauthenticated",method="GET",status="401",vendor="v"} 1.0' in text


@pytest.mark.parametrize(
    "credentials, check",
    [
        ({"type": "none"}, lambda seen: seen.header("Authorization") is None),
        ({"type": "api_key", "header": "X-Api-Key", "value": "${SECRET}"}, lambda seen: seen.header("X-Api-Key") == "s3cr3t/+="),
        ({"type": "api_key", "header": "Authorization", "prefix": "Token ", "value": "${SECRET}"},
         lambda seen: seen.header("Authorization") == "Token s3cr3t/+="),
        ({"type": "api_key", "query": "api_key", "value": "${SECRET}"},
         lambda seen: seen.raw_path == "/x?a=1&api_key=s3cr3t%2F%2B%3D"),
        ({"type": "bearer", "token": "${SECRET}"}, lambda seen: seen.header("Authorization") == "Bearer s3cr3t/+="),
        ({"type": "basic", "username": "u", "password": "${SECRET}"},
         lambda seen: seen.header("Authorization") == "Basic " + base64.b64encode(b"u:s3cr3t/+=").decode()),
    ],
)
async def test_static_credentials_are_injected(gateway, vendor, credentials, check):
    client = await gateway({"vendor": "v", "upstream": vendor.url, "credentials": credentials}, env={"SECRET": "s3cr3t/+="})
    await client.get("/v/x?a=1&api_key=callers-own", headers={"Authorization": "Bearer caller", "X-Api-Key": "caller"})
    assert check(vendor.last), vendor.last


async def test_secrets_never_reach_logs_metrics_or_errors(gateway, vendor, caplog):
    secret = "very-secret-value-123"
    client = await gateway(
        {"vendor": "v", "upstream": vendor.url, "credentials": {"type": "api_key", "query": "key", "value": "${S}"},
         "retry": {"attempts": 2, "on": [503], "backoff": {"initial": 0, "jitter": 0}}},
        {"vendor": "down", "upstream": "http://127.0.0.1:9", "credentials": {"type": "bearer", "token": "${S}"}},
        config={"callers": [{"name": "c", "key": "${CALLER}"}]},
        env={"S": secret, "CALLER": "caller-secret-456"},
    )
    caplog.set_level("DEBUG")
    key = {"X-Gateway-Key": "caller-secret-456"}
    vendor.script(503, 200)
    # The mock vendor echoes what it received; what the gateway itself says is checked.
    outputs = [str((await client.get("/v/x?q=1", headers=key)).headers)]
    outputs.append(await (await client.get("/down/x", headers=key)).text())
    outputs.append(await (await client.get("/v/x", headers={"X-Gateway-Key": "wrong"})).text())
    outputs.append(await (await client.get("/metrics")).text())
    # The mock vendor shares this process's access log: keep the gateway's own lines.
    outputs += [r.getMessage() for r in caplog.records if r.name.startswith("gateway")]
    outputs += [r.getMessage() for r in caplog.records if r.name == "aiohttp.access" and '"GET /x' not in r.getMessage()]
    for output in outputs:
        assert secret not in output and "caller-secret-456" not in output


async def test_a_query_credential_keeps_the_rest_of_the_query_byte_for_byte(gateway, vendor):
    client = await gateway({"vendor": "v", "upstream": vendor.url, "credentials": {"type": "api_key", "query": "api_key", "value": "${S}"}},
                           env={"S": "k"})
    await client.get("/v/x?a=1&&b=%20&api%5Fkey=mine")
    assert vendor.last.raw_path == "/x?a=1&&b=%20&api_key=k"
