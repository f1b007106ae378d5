"""The proxy behaves like calling the vendor directly: methods, paths, queries, bodies,
headers and answers pass through; only the gateway's own rules change anything."""

import asyncio
import gc
import gzip
import io
import socket

import aiohttp
import pytest
from aiohttp import web

from gateway.request import RequestContext
from tests.conftest import free_port
from tests.mock_vendor import answer, hang, reset


def policy(vendor, **extra):
    return {"vendor": "v", "upstream": vendor.url, **extra}


async def raw_request(client, request: bytes) -> bytes:
    """Send bytes as they are (no client-side normalisation) and read the whole answer."""
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(request)
    await writer.drain()
    data = await reader.read()
    writer.close()
    return data


async def test_method_path_query_and_body_reach_the_vendor_unchanged(gateway, vendor):
    client = await gateway(policy(vendor))
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
        response = await client.request(method, "/v/crm/v3/objects?b=2&a=1", data=b'{"x": 1}' if method != "GET" else None)
        assert response.status == 200
        assert (vendor.last.method, vendor.last.raw_path) == (method, "/crm/v3/objects?b=2&a=1")
    assert vendor.last.body == b'{"x": 1}'


async def test_the_query_string_is_forwarded_byte_for_byte(gateway, vendor):
    client = await gateway(policy(vendor))
    query = "q=a%20b+c&empty=&dup=1&dup=2&enc=%2F%3F%26&plain=caf%C3%A9&flag"
    await raw_request(client, f"GET /v/search?{query} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    assert vendor.last.raw_path == f"/search?{query}"


async def test_the_upstream_base_path_prefixes_the_request_path(gateway, vendor):
    client = await gateway({"vendor": "v", "upstream": vendor.url + "/api/v2/"})
    await client.get("/v/items/7")
    assert vendor.last.raw_path == "/api/v2/items/7"
    await client.get("/v")
    assert vendor.last.raw_path == "/api/v2"


async def test_headers_pass_both_ways_except_hop_by_hop_and_host(gateway, vendor):
    async def respond(request):
        return web.Response(
            text="ok",
            headers={"X-Vendor": "1", "Connection": "X-Vendor-Hop", "X-Vendor-Hop": "secret", "Keep-Alive": "timeout=5",
                     "Set-Cookie": "a=b"},
        )

    vendor.script(respond)
    client = await gateway(policy(vendor))
    response = await client.get(
        "/v/x",
        headers={"X-Custom": "kept", "Accept": "application/json", "Connection": "keep-alive, X-Drop-Me",
                 "X-Drop-Me": "1", "TE": "trailers", "Proxy-Authorization": "Basic eA==", "Host": "evil.example",
                 "X-Request-Id": "trace-42"},
    )
    seen = vendor.last
    assert seen.header("X-Custom") == "kept" and seen.header("Accept") == "application/json"
    for name in ("X-Drop-Me", "TE", "Proxy-Authorization"):
        assert seen.header(name) is None, name
    assert seen.header("Host") == vendor.url.removeprefix("http://")
    assert seen.header("X-Request-Id") == "trace-42"
    assert response.headers["X-Vendor"] == "1" and response.headers["Set-Cookie"] == "a=b"
    assert "X-Vendor-Hop" not in response.headers and "Keep-Alive" not in response.headers
    assert response.headers["X-Request-Id"] == "trace-42"
    assert response.headers["X-Gateway-Attempts"] == "1"


async def test_the_gateway_adds_no_headers_of_its_own_but_the_request_id(gateway, vendor):
    client = await gateway(policy(vendor))
    await raw_request(client, b"GET /v/x HTTP/1.1\r\nHost: x\r\nX-Mine: 1\r\nConnection: close\r\n\r\n")
    assert sorted(vendor.last.headers) == ["host", "x-mine", "x-request-id"]
    await raw_request(client, b"POST /v/x HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
    assert sorted(vendor.last.headers) == ["content-length", "host", "x-request-id"] and vendor.last.body == b"{}"


async def test_a_request_id_is_made_when_the_caller_sends_none(gateway, vendor):
    client = await gateway(policy(vendor))
    response = await client.get("/v/x")
    made = response.headers["X-Request-Id"]
    assert len(made) == 32 and vendor.last.header("X-Request-Id") == made


async def test_compressed_answers_pass_through_untouched(gateway, vendor):
    packed = gzip.compress(b"hello " * 1000)
    vendor.script(answer(200, packed, {"Content-Encoding": "gzip", "Content-Type": "text/plain"}))
    client = await gateway(policy(vendor))
    response = await client.get("/v/x", headers={"Accept-Encoding": "gzip"}, auto_decompress=False)
    assert response.headers["Content-Encoding"] == "gzip"
    assert await response.read() == packed
    assert vendor.last.header("Accept-Encoding") == "gzip"


async def test_redirects_go_back_to_the_caller_unfollowed(gateway, vendor):
    vendor.script(answer(302, b"", {"Location": "http://127.0.0.2:1/steal"}))
    client = await gateway(policy(vendor, credentials={"type": "api_key", "header": "X-Api-Key", "value": "${K}"}),
                           env={"K": "secret-key"})
    response = await client.get("/v/x", allow_redirects=False)
    assert response.status == 302 and response.headers["Location"] == "http://127.0.0.2:1/steal"
    assert len(vendor.received) == 1


async def test_every_path_character_reaches_the_vendor_byte_for_byte(gateway, vendor):
    client = await gateway(policy(vendor))
    path = "/sobjects/Contact/Email__c/ann@example.com/a%40b@c;p=1,2:3!$&'()*+=~-._%2F%25"
    data = await raw_request(client, f"PATCH /v{path}?q=@x%20 HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                                     f"Connection: close\r\n\r\n{{}}".encode())
    assert data.startswith(b"HTTP/1.1 200 OK")
    assert (vendor.last.method, vendor.last.raw_path) == ("PATCH", f"{path}?q=@x%20")


async def test_head_and_no_content_answers(gateway, vendor):
    vendor.script(answer(200, b"", {"Content-Length": "1234"}), answer(204))
    client = await gateway(policy(vendor))
    head = await client.head("/v/x")
    assert head.status == 200 and head.headers["Content-Length"] == "1234"
    assert (await client.delete("/v/x")).status == 204


async def test_vendor_errors_pass_through_unchanged(gateway, vendor):
    vendor.script(answer(422, b'{"error": "bad email"}', {"Content-Type": "application/json"}))
    client = await gateway(policy(vendor))
    response = await client.post("/v/contacts", data=b"{}")
    assert response.status == 422 and await response.read() == b'{"error": "bad email"}'
    assert response.headers["Content-Type"] == "application/json"


async def test_a_body_over_max_body_gets_413_without_reaching_the_vendor(gateway, vendor):
    client = await gateway(policy(vendor), config={"max_body": "1KB"})
    response = await client.post("/v/x", data=b"x" * 2048)
    assert response.status == 413
    assert (await response.json())["type"] == "payload-too-large"

    async def chunks():
        for _ in range(4):
            yield b"y" * 512

    response = await client.post("/v/x", data=chunks())
    assert response.status == 413
    assert vendor.received == []


async def test_a_large_upload_streams_to_the_vendor(gateway, vendor):
    client = await gateway(policy(vendor), config={"max_body": "64MB"})
    body = bytes(range(256)) * (12 * 4096)  # 12 MiB, past the replay buffer

    async def chunks():
        for i in range(0, len(body), 65536):
            yield body[i : i + 65536]

    response = await client.put("/v/upload", data=chunks())
    assert response.status == 200
    assert vendor.last.body == body
    response = await client.put("/v/upload", data=io.BytesIO(body))
    assert response.status == 200 and vendor.last.header("Content-Length") == str(len(body))


async def test_a_vendor_that_does_not_answer_in_time_gets_504(gateway, vendor):
    vendor.script(hang)
    client = await gateway(policy(vendor, timeout="300ms"))
    response = await client.get("/v/slow")
    assert response.status == 504
    problem = await response.json()
    assert problem["type"] == "upstream-timeout" and problem["vendor"] == "v"


async def test_a_refused_connection_gets_502(gateway):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = await gateway({"vendor": "v", "upstream": f"http://127.0.0.1:{port}"})
    response = await client.get("/v/x")
    assert response.status == 502
    assert (await response.json())["type"] == "upstream-unavailable"


async def test_a_connection_reset_by_the_vendor_gets_502(gateway, vendor):
    vendor.script(reset, reset)  # aiohttp resends an idempotent request once on a dropped keep-alive
    client = await gateway(policy(vendor))
    assert (await client.get("/v/x")).status == 502


async def test_retries_follow_the_policy(gateway, vendor):
    vendor.script(503, 503, 200)
    client = await gateway(policy(vendor, retry={"attempts": 3, "on": [503], "backoff": {"initial": "10ms", "jitter": 0}}))
    response = await client.get("/v/x")
    assert response.status == 200 and response.headers["X-Gateway-Attempts"] == "3"
    vendor.script(503, 503, 503)
    response = await client.post("/v/x", data=b"{}")
    assert response.status == 503 and response.headers["X-Gateway-Attempts"] == "1"


async def test_a_hung_vendor_does_not_take_connections_another_vendor_needs(gateway, vendor, aiohttp_server):
    slow = await aiohttp_server(_hanging_app())
    # Stuck for a minute: an answer within 15 s (time for a loaded box) cannot be one that
    # waited for a connection the stuck requests gave back.
    client = await gateway(policy(vendor), {"vendor": "slow", "upstream": f"http://127.0.0.1:{slow.port}", "timeout": "60s"})
    stuck = [asyncio.create_task(client.get("/slow/x")) for _ in range(120)]
    await asyncio.sleep(0.3)
    async with aiohttp.ClientSession() as other_caller:
        response = await asyncio.wait_for(other_caller.get(f"{client.make_url('/v/x')}"), 15)
        assert response.status == 200
    for task in stuck:
        task.cancel()
    await asyncio.gather(*stuck, return_exceptions=True)


def _hanging_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/{tail:.*}", hang)
    return app


@pytest.mark.parametrize("method", ["TRACE", "TRACK", "CONNECT"])
async def test_methods_that_would_echo_or_tunnel_are_refused(gateway, vendor, method):
    client = await gateway(policy(vendor))
    data = await raw_request(client, f"{method} /v/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    assert data.split(b" ", 2)[1] in (b"400", b"405")  # aiohttp's parser refuses TRACK itself
    assert vendor.received == []


async def test_an_unexpected_error_still_answers_problem_json(gateway, vendor):
    from gateway.state import LIVE

    class Broken:
        async def apply(self, headers, query):
            raise RuntimeError("bug")

    client = await gateway(policy(vendor))
    client.server.app[LIVE].current.pipeline.attempts.credentials = {"v": Broken()}
    response = await client.get("/v/x")
    assert response.status == 500
    problem = await response.json()
    assert problem["type"] == "internal-error" and problem["vendor"] == "v"
    assert response.headers["X-Request-Id"] in problem["detail"]


async def test_other_methods_pass_through(gateway, vendor):
    client = await gateway(policy(vendor))
    assert (await client.request("PROPFIND", "/v/x")).status == 200
    assert vendor.last.method == "PROPFIND"


async def test_a_gzip_request_body_reaches_the_vendor_as_sent(gateway, vendor):
    client = await gateway(policy(vendor))
    packed = gzip.compress(b'{"name": "acme"}' * 100)
    head = f"POST /v/x HTTP/1.1\r\nHost: x\r\nContent-Encoding: gzip\r\nContent-Length: {len(packed)}\r\nConnection: close\r\n\r\n"
    await raw_request(client, head.encode() + packed)
    assert vendor.last.body == packed and vendor.last.header("Content-Encoding") == "gzip"


async def test_percent_encoded_utf8_in_the_path_passes(gateway, vendor):
    client = await gateway(policy(vendor))
    data = await raw_request(client, b"GET /v/search/J%C3%BCrgen/caf%C3%A9 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 200")
    assert vendor.last.raw_path == "/search/J%C3%BCrgen/caf%C3%A9"


async def test_a_streamed_upload_over_max_body_gets_413(gateway, vendor):
    client = await gateway(policy(vendor), config={"max_body": "3MB"})

    async def chunks():
        for _ in range(64):
            yield b"z" * 65536  # 4 MiB, chunked: no length to refuse up front

    response = await client.post("/v/upload", data=chunks())
    assert response.status == 413 and (await response.json())["type"] == "payload-too-large"


async def test_an_upstream_header_with_control_characters_is_dropped(gateway):
    import socket as socketlib

    with socketlib.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        port = listener.getsockname()[1]
        client = await gateway({"vendor": "raw", "upstream": f"http://127.0.0.1:{port}"})
        pending = asyncio.create_task(client.get("/raw/x"))
        conn, _ = await asyncio.get_running_loop().sock_accept(listener)
        await asyncio.get_running_loop().sock_recv(conn, 65536)
        await asyncio.get_running_loop().sock_sendall(
            conn, b"HTTP/1.1 200 OK\r\nX-Bad: a\x01b\r\nX-Good: 1\r\nContent-Length: 2\r\n\r\nok"
        )
        response = await pending
        conn.close()
    assert response.status == 200 and await response.read() == b"ok"
    assert response.headers["X-Good"] == "1" and "X-Bad" not in response.headers


async def test_problems_name_the_vendor_and_401_says_how_to_authenticate(gateway, vendor):
    client = await gateway(policy(vendor), config={"callers": [{"name": "c", "key": "${K}"}]}, env={"K": "k"})
    response = await client.get("/v/x")
    assert response.status == 401 and response.headers["WWW-Authenticate"] == 'Bearer realm="gateway"'
    assert (await response.json())["vendor"] == "v"


async def one_answer_vendor(answer: bytes):
    """Whatever listens at a vendor's address: reads a little, writes ``answer``, hangs up."""

    async def serve(reader, writer):
        await reader.read(65536)
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


@pytest.mark.parametrize(
    "answer, described, echoed",
    [
        (b"SSH-2.0-OpenSSH_9.2\r\n", "invalid status line", b"SSH-2.0"),
        (b"HTTP/1.1 200 OK\r\nX-Big: " + b"Q" * 20000 + b"\r\n\r\n", "header too long", b"QQQQ"),
        (b"HTTP/1.1 2x0 OK\r\n\r\n", "invalid status line", b"2x0"),
        (b"HTTP/1.1 200 OK\r\nNot A Header\r\nContent-Length: 0\r\n\r\n", "invalid header", b"Not A"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: twelve\r\n\r\n", "Content-Length", b"twelve"),
    ],
    ids=["not-http", "long-header", "bad-status", "bad-header", "bad-length"],
)
async def test_a_broken_answer_is_described_never_echoed(gateway, answer, described, echoed):
    server, url = await one_answer_vendor(answer)
    async with server:
        client = await gateway({"vendor": "v", "upstream": url})
        response = await client.get("/v/x")
        body = await response.read()
    assert response.status == 502
    problem = await response.json()
    assert problem["type"] == "upstream-unavailable" and described in problem["detail"], problem["detail"]
    assert echoed not in body and b"b'" not in body


async def test_the_callers_forwarding_headers_do_not_reach_the_vendor(gateway, vendor):
    client = await gateway(policy(vendor))
    await client.get("/v/x", headers={
        "Forwarded": "for=10.1.2.3;host=crm.internal;proto=http",
        "X-Forwarded-For": "10.1.2.3, 10.0.0.7", "X-Forwarded-Host": "crm.internal",
        "X-Forwarded-Proto": "http", "X-Forwarded-Port": "8443", "x-forwarded-prefix": "/svc",
        "X-Real-IP": "10.1.2.3", "X-Kept": "1",
    })
    assert vendor.last.header("X-Kept") == "1"
    assert not [name for name in vendor.last.headers if "forwarded" in name or "real-ip" in name], vendor.last.headers


@pytest.mark.parametrize("target", ["/v/search?q=a#b&page=2", "/v/items#top", "/v/x?next=%23ok#"])
async def test_a_raw_hash_in_the_target_is_a_bad_request(gateway, vendor, target):
    client = await gateway(policy(vendor))
    data = await raw_request(client, f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    assert data.startswith(b"HTTP/1.1 400 ") and b'"bad-request"' in data and b"%23" in data
    assert vendor.received == []
    await raw_request(client, b"GET /v/x?next=%23ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert vendor.last.raw_path == "/x?next=%23ok"  # encoded, it is the caller's data


async def test_the_gateways_own_errors_are_counted_by_type_and_the_vendors_are_not(gateway, vendor):
    client = await gateway(
        policy(vendor, budgets=[{"name": "tiny", "limit": 1, "per": "1m"}]),
        {"vendor": "b", "upstream": vendor.url,
         "circuit_breaker": {"failure_ratio": 0.5, "window": "1m", "min_calls": 1, "open_for": "1m"}},
        {"vendor": "down", "upstream": f"http://127.0.0.1:{free_port()}"},  # nothing listens
    )
    assert (await client.get("/v/a")).status == 200
    assert (await client.get("/v/b")).status == 429  # ours: budget-exhausted
    vendor.script(503)
    assert (await client.get("/b/a")).status == 503  # the vendor's own: counted nowhere here
    assert (await client.get("/b/b")).status == 503  # ours: circuit-open
    assert (await client.get("/down/x")).status == 502
    assert (await client.get("/nowhere/x")).status == 404
    text = await (await client.get("/metrics")).text()
    errors = sorted(line for line in text.splitlines() if line.startswith("gateway_errors_total{"))
    assert errors == [
        'gateway_errors_total{type="budget-exhausted",vendor="v"} 1.0',
        'gateway_errors_total{type="circuit-open",vendor="b"} 1.0',
        'gateway_errors_total{type="unknown-vendor",vendor="unknown"} 1.0',
        'gateway_errors_total{type="upstream-unavailable",vendor="down"} 1.0',
    ]


@pytest.mark.parametrize(
    "head, described",
    [
        (b"GET /v/x HTTP/1.1\r\nHost: x\r\nX-Big: " + b"Z" * 10000 + b"\r\n\r\n", "header too long"),
        (b"GET /v/x HTTP/1.1\r\nHost: x\r\nNot A Header\r\n\r\n", "invalid header"),
        (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03", "invalid request line"),
        (b"POST /v/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "invalid chunked encoding"),
    ],
    ids=["long-header", "bad-header", "tls", "bad-chunk"],
)
async def test_a_malformed_request_is_a_bad_request_problem_logged_at_info(gateway, vendor, caplog, head, described):
    import logging

    caplog.set_level(logging.INFO)
    client = await gateway(policy(vendor))
    data = await raw_request(client, head)
    status_line, _, body = data.partition(b"\r\n\r\n")
    assert status_line.split(b" ")[1] == b"400" and b"application/problem+json" in status_line
    assert b'"bad-request"' in body and f"malformed request: {described}".encode() in body
    assert b"ZZZZ" not in body and b"Not A" not in body
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert vendor.received == []
    text = await (await client.get("/metrics")).text()
    assert 'gateway_errors_total{type="bad-request",vendor="unknown"} 1.0' in text


async def test_an_answered_request_leaves_nothing_for_the_cyclic_collector(gateway, vendor):
    """A request's objects are freed as it is answered. Its context once kept a check that
    kept the request, which keeps the context: every request was a reference cycle, and
    walking those was a tenth of the gateway's CPU at full load."""
    client = await gateway(policy(vendor, budgets=[{"name": "b", "limit": 1000, "per": "1s"}]))
    assert (await client.get("/v/items/1")).status == 200  # what a first request makes once
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)  # what a collection finds is kept, to be looked at
    try:
        for _ in range(20):
            response = await client.get("/v/items/1")
            assert response.status == 200
            await response.read()
        gc.collect()
        left = {type(found).__qualname__ for found in gc.garbage
                if isinstance(found, web.BaseRequest | RequestContext)}
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert left == set()


@pytest.mark.parametrize("target", ["/%68ealthz", "/healthz?probe=1"])
async def test_the_gateways_own_routes_are_found_however_their_path_is_sent(gateway, vendor, target):
    client = await gateway(policy(vendor))
    data = await raw_request(client, f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    assert data.startswith(b"HTTP/1.1 200 ") and b'"status":"ok"' in data.replace(b" ", b"")
    assert vendor.received == []


async def test_a_caller_that_expects_100_continue_gets_it_before_sending_its_body(gateway, vendor):
    client = await gateway(policy(vendor))
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(b"POST /v/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n"
                 b"Connection: close\r\n\r\n")
    assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"hello")
    data = await reader.read()
    writer.close()
    assert data.startswith(b"HTTP/1.1 200 ") and vendor.last.body == b"hello"
