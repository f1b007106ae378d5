"""Answers as the caller sees them: streamed as the vendor's bytes arrive, whatever their
size or route, and the vendor's references to itself pointing back into the gateway."""

import asyncio

import pytest
from aiohttp import web

from tests.mock_vendor import answer

# Only a deadline for a hang: the vendor holds the rest of its answer until the test lets
# it go, so a gateway that held the answer would never show its first bytes at all.
GENEROUS = 30.0
ADMIN = {"X-Gateway-Admin-Key": "admin-key-1"}
ADMIN_ENV = {"ADMIN": "admin-key-1"}


def dripped(release: asyncio.Event, status: int = 200, with_length: bool = True):
    """A 50-byte answer: 5 bytes at once, the other 45 one by one once ``release`` is set."""

    async def respond(request: web.Request) -> web.StreamResponse:
        out = web.StreamResponse(status=status, headers={"Content-Type": "text/plain"})
        if with_length:
            out.content_length = 50
        await out.prepare(request)
        await out.write(b"a" * 5)
        await release.wait()
        for _ in range(45):
            await out.write(b"b")
            await asyncio.sleep(0)
        await out.write_eof()
        return out

    return respond


async def first_bytes_then_rest(client, method: str, path: str, release: asyncio.Event) -> tuple[int, bytes, bytes]:
    """The status, the first bytes that reached the caller before the vendor was let go, and the rest."""
    try:
        async with client.request(method, path, data=b"{}" if method != "GET" else None) as response:
            first = await asyncio.wait_for(response.content.readany(), GENEROUS)
            release.set()
            rest = await asyncio.wait_for(response.content.read(), GENEROUS)
            return response.status, first, rest
    finally:
        release.set()


@pytest.mark.parametrize("with_length", [True, False], ids=["content-length", "chunked"])
async def test_a_dripped_answer_reaches_the_caller_before_the_vendor_sends_the_rest(gateway, vendor, with_length):
    release = asyncio.Event()
    vendor.script(dripped(release, with_length=with_length))
    client = await gateway({"vendor": "v", "upstream": vendor.url})
    status, first, rest = await first_bytes_then_rest(client, "GET", "/v/drip", release)
    assert status == 200 and first == b"aaaaa" and first + rest == b"a" * 5 + b"b" * 45


async def test_a_long_polls_head_reaches_the_caller_before_any_of_its_body(gateway, vendor):
    release = asyncio.Event()

    async def long_poll(request: web.Request) -> web.StreamResponse:
        out = web.StreamResponse(headers={"X-Poll": "open"})
        out.content_length = 2
        await out.prepare(request)
        await release.wait()
        await out.write(b"{}")
        return out

    vendor.script(long_poll)
    client = await gateway({"vendor": "v", "upstream": vendor.url})
    try:
        async with await asyncio.wait_for(client.get("/v/events"), GENEROUS) as response:
            assert response.status == 200 and response.headers["X-Poll"] == "open"
            release.set()
            assert await asyncio.wait_for(response.read(), GENEROUS) == b"{}"
    finally:
        release.set()


async def test_a_cacheable_answer_streams_and_is_stored_once_complete(gateway, vendor):
    release = asyncio.Event()
    vendor.script(dripped(release))
    client = await gateway({"vendor": "v", "upstream": vendor.url, "cache": [{"match": {"path": "/drip"}, "ttl": "1h"}]})
    status, first, rest = await first_bytes_then_rest(client, "GET", "/v/drip", release)
    assert status == 200 and first == b"aaaaa"
    hit = await client.get("/v/drip")
    assert hit.headers["X-Gateway-Cache"] == "HIT" and await hit.read() == first + rest
    assert len(vendor.received) == 1


async def test_a_failed_writes_answer_streams_and_is_kept_before_it_ends(gateway, vendor):
    release = asyncio.Event()
    vendor.script(dripped(release, status=500))
    client = await gateway({"vendor": "v", "upstream": vendor.url, "dead_letter": True},
                           config={"admin_key": "${ADMIN}"}, env=ADMIN_ENV)
    status, first, rest = await first_bytes_then_rest(client, "POST", "/v/orders", release)
    assert status == 500 and first == b"aaaaa"
    [entry] = (await (await client.get("/_gateway/dead-letters", headers=ADMIN)).json())["dead_letters"]
    assert entry["error"] == "upstream 500: " + (first + rest).decode()


async def test_a_caller_leaving_a_failed_writes_streaming_answer_leaves_it_kept(gateway, vendor):
    release = asyncio.Event()
    vendor.script(dripped(release, status=503))
    client = await gateway({"vendor": "v", "upstream": vendor.url, "dead_letter": True},
                           config={"admin_key": "${ADMIN}"}, env=ADMIN_ENV)
    try:
        async with client.post("/v/orders", data=b"{}") as response:
            assert await asyncio.wait_for(response.content.readany(), GENEROUS) == b"aaaaa"
            response.close()
        deadline = asyncio.get_running_loop().time() + GENEROUS
        while not (await (await client.get("/_gateway/dead-letters", headers=ADMIN)).json())["dead_letters"]:
            assert asyncio.get_running_loop().time() < deadline, "the write was never kept"
            await asyncio.sleep(0.05)
    finally:
        release.set()
    [entry] = (await (await client.get("/_gateway/dead-letters", headers=ADMIN)).json())["dead_letters"]
    assert (entry["method"], entry["status"]) == ("POST", 503) and entry["error"].startswith("upstream 503: aaaaa")


async def test_redirects_into_the_upstream_come_back_through_the_gateway(gateway, vendor):
    own = vendor.url + "/api"
    vendor.script(
        answer(302, b"", {"Location": f"{own}/orders/7?view=full"}),
        answer(303, b"", {"Location": "/api/orders/8#top"}),
        answer(302, b"", {"Location": "https://elsewhere.example/api/orders/9"}),
        answer(301, b"", {"Location": "/outside/9"}),
        answer(307, b"", {"Location": "../orders/11"}),
        answer(201, b"{}", {"Location": f"{own}/orders/12", "Content-Location": "/api/orders/12"}),
    )
    client = await gateway({"vendor": "v", "upstream": own})
    seen = []
    for method in ("GET", "POST", "GET", "GET", "GET", "POST"):
        response = await client.request(method, "/v/orders", data=b"{}" if method == "POST" else None,
                                         allow_redirects=False)
        seen.append((response.status, response.headers["Location"], response.headers.get("Content-Location")))
    assert seen == [
        (302, "/v/orders/7?view=full", None),
        (303, "/v/orders/8#top", None),
        (302, "https://elsewhere.example/api/orders/9", None),  # another host: as it was, never followed
        (301, "/outside/9", None),  # outside the base path: as it was
        (307, "../orders/11", None),  # relative: the client resolves it against the gateway's URL
        (201, "/v/orders/12", "/v/orders/12"),
    ]
    assert len(vendor.received) == 6


async def test_a_client_following_a_redirect_stays_in_the_gateway_with_its_key(gateway, vendor):
    vendor.script(answer(302, b"", {"Location": f"{vendor.url}/api/new"}))
    client = await gateway({"vendor": "v", "upstream": vendor.url + "/api",
                            "credentials": {"type": "api_key", "header": "X-Api-Key", "value": "${K}"}},
                           env={"K": "vendor-secret"})
    response = await client.get("/v/old")
    assert response.status == 200 and response.url.path == "/v/new"
    assert [r.raw_path for r in vendor.received] == ["/api/old", "/api/new"]
    assert all(r.header("X-Api-Key") == "vendor-secret" for r in vendor.received)


async def test_a_stored_answer_keeps_the_rewritten_location(gateway, vendor):
    vendor.script(answer(200, b'{"id": 1}', {"Content-Location": f"{vendor.url}/orders/1", "Content-Type": "application/json"}))
    client = await gateway({"vendor": "v", "upstream": vendor.url, "cache": [{"match": {"path": "/orders/*"}, "ttl": "1h"}]})
    miss = await client.get("/v/orders/1")
    hit = await client.get("/v/orders/1")
    assert [r.headers["X-Gateway-Cache"] for r in (miss, hit)] == ["MISS", "HIT"]
    assert miss.headers["Content-Location"] == hit.headers["Content-Location"] == "/v/orders/1"
    assert len(vendor.received) == 1


async def test_a_raw_at_sign_reaches_the_vendor_as_sent(gateway, vendor):
    client = await gateway({"vendor": "v", "upstream": vendor.url})
    path = "/services/data/v59.0/sobjects/Contact/Email__c/ann@example.com"
    response = await client.patch("/v" + path, data=b'{"LastName": "Lee"}')
    assert response.status == 200
    assert (vendor.last.method, vendor.last.raw_path) == ("PATCH", path)
