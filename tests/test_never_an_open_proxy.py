"""The gateway reaches only the vendors' configured origins, whatever a caller sends.

Listeners on other loopback addresses stand in for internal services: they must never
see a connection.
"""

import asyncio

import pytest
from aiohttp import web

from tests.test_proxy import raw_request


class Tripwire:
    def __init__(self) -> None:
        self.hits = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        return web.Response(text="internal secrets")


@pytest.fixture
async def internal(vendor_app_server):
    tripwire = Tripwire()
    servers = [await vendor_app_server(tripwire.app(), host) for host in ("127.0.0.2", "127.0.0.3")]
    tripwire.targets = [f"127.0.0.{i}:{s.port}" for i, s in zip((2, 3), servers)]
    return tripwire


ATTACKS = [
    "/v/..{slash}..{slash}{target}/x",
    "/v/%2e%2e/{target}",
    "/v/.%2E/%2e%2E/{target}",
    "/v/%252e%252e/{target}",
    "//{target}/x",
    "/v//{target}/x",
    "/v/%2f%2f{target}/x",
    "/v/x\\@{target}",
    "/v/%5c%5c{target}",
    "/v/x%00@{target}",
    "/v/x%0d%0aHost:%20{target}",
]


@pytest.mark.parametrize("attack", ATTACKS)
async def test_path_tricks_get_400_and_reach_nothing(gateway, vendor, internal, attack):
    client = await gateway({"vendor": "v", "upstream": vendor.url})
    for target in internal.targets:
        path = attack.format(target=target, slash="/")
        data = await raw_request(client, f"GET {path} HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n".encode())
        assert data.startswith(b"HTTP/1.1 400 Bad Request"), path
    assert internal.hits == 0 and vendor.received == []


@pytest.mark.parametrize("trick", ["/v/@{target}/x", "/v/x@{target}/y", "/v/@{target}", "/v/a@b@{target}/c"])
async def test_an_at_sign_in_the_path_goes_to_the_configured_upstream_only(gateway, vendor, internal, trick):
    """A raw '@' is a path character: forwarded as sent, it can never become userinfo."""
    client = await gateway({"vendor": "v", "upstream": vendor.url})
    for target in internal.targets:
        path = trick.format(target=target)
        data = await raw_request(client, f"GET {path} HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n".encode())
        assert data.startswith(b"HTTP/1.1 200 OK"), path
        assert vendor.last.raw_path == path.removeprefix("/v")
    for path in ("/v/@evil.example/x", "/v/x@127.0.0.2:1/y"):
        assert (await client.get(path)).status == 200
        assert vendor.last.raw_path == path.removeprefix("/v")
    assert internal.hits == 0 and len(vendor.received) == len(internal.targets) + 2


async def test_absolute_form_targets_get_400(gateway, vendor, internal):
    client = await gateway({"vendor": "v", "upstream": vendor.url})
    for target in internal.targets:
        for line in (f"GET http://{target}/v/x HTTP/1.1", f"CONNECT {target} HTTP/1.1"):
            data = await raw_request(client, f"{line}\r\nHost: {target}\r\nConnection: close\r\n\r\n".encode())
            assert data.startswith(b"HTTP/1.1 4"), line
            assert b"bad-request" in data or b"method-not-allowed" in data or data.startswith(b"HTTP/1.1 400"), line
    assert internal.hits == 0 and vendor.received == []


async def test_the_host_header_never_chooses_the_destination(gateway, vendor, internal):
    client = await gateway({"vendor": "v", "upstream": vendor.url})
    for target in internal.targets:
        for header in ("Host", "X-Forwarded-Host", "Forwarded"):
            value = target if header != "Forwarded" else f"host={target}"
            response = await client.get("/v/x", headers={header: value})
            assert response.status == 200
    assert internal.hits == 0 and len(vendor.received) == 6


async def test_redirects_to_internal_addresses_are_not_followed(gateway, vendor, internal):
    async def redirect(request):
        raise web.HTTPFound(f"http://{internal.targets[0]}/steal")

    vendor.script(redirect, redirect)
    client = await gateway({"vendor": "v", "upstream": vendor.url})
    assert (await client.get("/v/x", allow_redirects=False)).status == 302
    assert (await client.post("/v/x", data=b"1", allow_redirects=False)).status == 302
    await asyncio.sleep(0.05)
    assert internal.hits == 0
