"""Failures handled the way integration teams do: retries with backoff, a circuit
breaker, and dead letters that keep every failed write for review and replay."""

import asyncio
import os
import signal
import time

import aiohttp
import pytest

from tests.mock_vendor import answer

# Open for 3 s: long enough that the checks made while it is open all fit on a loaded box.
BREAKER = {"failure_ratio": 0.5, "window": "10s", "min_calls": 4, "open_for": "3s"}
ADMIN = {"X-Gateway-Admin-Key": "admin-key-1"}
ADMIN_ENV = {"ADMIN": "admin-key-1", "VENDOR_KEY": "vendor-key-9"}


def policy(vendor, **extra):
    return {"vendor": "v", "upstream": vendor.url, **extra}


async def test_a_retry_after_from_the_vendor_is_honoured(gateway, vendor):
    vendor.script(answer(503, b"busy", {"Retry-After": "1"}), 200)
    client = await gateway(policy(vendor, retry={"attempts": 2, "on": [503], "backoff": {"initial": "10ms", "jitter": 0}}))
    started = time.monotonic()
    response = await client.get("/v/x")
    elapsed = time.monotonic() - started
    assert response.status == 200 and response.headers["X-Gateway-Attempts"] == "2"
    assert 1.0 <= elapsed < 3  # the vendor's second, not the 10 ms backoff (nor much more)


async def test_a_retry_after_longer_than_the_backoff_cap_is_answered_at_once(gateway, vendor):
    vendor.script(answer(429, b"slow down", {"Retry-After": "120"}))
    client = await gateway(policy(vendor, retry={"attempts": 3, "on": [429], "backoff": {"max": "10s"}}))
    started = time.monotonic()
    response = await client.get("/v/x")
    assert response.status == 429 and response.headers["Retry-After"] == "120"
    assert time.monotonic() - started < 5 and len(vendor.received) == 1  # no 10 s wait


async def test_post_is_retried_only_with_an_idempotency_key(gateway, vendor):
    retry = {"attempts": 3, "on": [503], "backoff": {"initial": 0, "jitter": 0}}
    client = await gateway(policy(vendor, retry=retry))
    vendor.script(503, 200)
    assert (await client.post("/v/x", data=b"{}")).status == 503
    vendor.queue.clear()
    vendor.script(503, 200)
    response = await client.post("/v/x", data=b"{}", headers={"Idempotency-Key": "k-1"})
    assert response.status == 200 and vendor.last.header("Idempotency-Key") == "k-1"
    assert len(vendor.received) == 3


async def test_the_breaker_opens_probes_once_and_closes(gateway, vendor):
    client = await gateway(policy(vendor, circuit_breaker=BREAKER))
    vendor.script(500, 500, 500, 500)
    for _ in range(4):
        assert (await client.get("/v/x")).status == 500
    response = await client.get("/v/x")
    assert response.status == 503 and 1 <= int(response.headers["Retry-After"]) <= 3
    problem = await response.json()
    assert problem["type"] == "circuit-open" and problem["retry_after"] == int(response.headers["Retry-After"])
    assert len(vendor.received) == 4
    text = await (await client.get("/metrics")).text()
    assert 'gateway_circuit_state{vendor="v"} 2.0' in text
    status = await (await client.get("/_gateway/status")).json()
    assert status["vendors"]["v"]["circuit_breaker"] == "open"
    await asyncio.sleep(3.05)
    arrived, release = asyncio.Event(), asyncio.Event()

    async def held_ok(request):
        from aiohttp import web

        arrived.set()
        await release.wait()
        return web.Response(text="ok")

    vendor.script(held_ok)
    probe = asyncio.create_task(client.get("/v/x"))
    await asyncio.wait_for(arrived.wait(), 30)
    assert (await client.get("/v/x")).status == 503  # only one probe while it is out
    release.set()
    assert (await probe).status == 200
    assert (await client.get("/v/x")).status == 200
    assert len(vendor.received) == 6
    text = await (await client.get("/metrics")).text()
    assert 'gateway_circuit_state{vendor="v"} 0.0' in text


async def test_two_processes_open_and_close_together(gateway_process, vendor, redis_server):
    p = policy(vendor, circuit_breaker=BREAKER)
    first, second = (gateway_process(p, config={"storage": redis_server.url}) for _ in range(2))
    async with aiohttp.ClientSession() as session:
        vendor.script(500, 500, 500, 500)
        for _ in range(4):
            assert (await session.get(first.url + "/v/x")).status == 500
        response = await session.get(second.url + "/v/x")
        assert response.status == 503 and (await response.json())["type"] == "circuit-open"
        await asyncio.sleep(3.05)
        assert (await session.get(second.url + "/v/x")).status == 200  # the probe, from the other process
        assert (await session.get(first.url + "/v/x")).status == 200
    assert len(vendor.received) == 6


async def test_failed_writes_are_kept_without_credentials_and_replayed_with_them(gateway, vendor):
    client = await gateway(
        policy(vendor, dead_letter=True, credentials={"type": "api_key", "header": "X-Api-Key", "value": "${VENDOR_KEY}"}),
        config={"admin_key": "${ADMIN}"}, env=ADMIN_ENV,
    )
    vendor.script(answer(500, b'{"error": "db down"}'))
    response = await client.post("/v/contacts?src=form", data=b'{"email": "a@b.example"}',
                                 headers={"Content-Type": "application/json", "X-Api-Key": "callers-own"})
    assert response.status == 500 and await response.read() == b'{"error": "db down"}'
    assert (await client.get("/v/contacts")).status == 200  # reads are never kept
    listing = await (await client.get("/_gateway/dead-letters", headers=ADMIN)).json()
    [summary] = listing["dead_letters"]
    assert (summary["vendor"], summary["method"], summary["path"], summary["query"], summary["status"]) == (
        "v", "POST", "/contacts", "src=form", 500)
    assert summary["error"] == 'upstream 500: {"error": "db down"}' and summary["attempts"] == 1
    detail = await (await client.get(f"/_gateway/dead-letters/{summary['id']}", headers=ADMIN)).json()
    assert detail["body"] == '{"email": "a@b.example"}'
    assert ["Content-Type", "application/json"] in detail["headers"]
    assert "vendor-key-9" not in str(detail) and "callers-own" not in str(detail)
    text = await (await client.get("/metrics")).text()
    assert 'gateway_dead_letters{vendor="v"} 1.0' in text

    result = await (await client.post(f"/_gateway/dead-letters/{summary['id']}/replay", headers=ADMIN)).json()
    assert result["outcome"] == "delivered" and result["status"] == 200
    assert vendor.last.method == "POST" and vendor.last.raw_path == "/contacts?src=form"
    assert vendor.last.body == b'{"email": "a@b.example"}' and vendor.last.header("X-Api-Key") == "vendor-key-9"
    assert (await (await client.get("/_gateway/dead-letters", headers=ADMIN)).json())["dead_letters"] == []
    text = await (await client.get("/metrics")).text()
    assert 'gateway_dead_letters{vendor="v"} 0.0' in text


async def test_gateway_errors_on_writes_are_kept_and_a_failed_replay_updates_the_entry(gateway, vendor):
    client = await gateway(policy(vendor, dead_letter=True, timeout="200ms"), config={"admin_key": "${ADMIN}"}, env=ADMIN_ENV)
    from tests.mock_vendor import hang

    vendor.script(hang)
    assert (await client.put("/v/deals/7", data=b"x")).status == 504
    [entry] = (await (await client.get("/_gateway/dead-letters?vendor=v", headers=ADMIN)).json())["dead_letters"]
    assert entry["status"] == 504 and entry["error"].startswith("upstream-timeout:")
    vendor.script(422)
    result = await (await client.post(f"/_gateway/dead-letters/{entry['id']}/replay", headers=ADMIN)).json()
    assert result["outcome"] == "failed" and result["status"] == 422
    again = await (await client.get(f"/_gateway/dead-letters/{entry['id']}", headers=ADMIN)).json()
    assert (again["status"], again["replays"], again["attempts"]) == (422, 1, 2)
    assert (await client.delete(f"/_gateway/dead-letters/{entry['id']}", headers=ADMIN)).status == 204
    assert (await client.get(f"/_gateway/dead-letters/{entry['id']}", headers=ADMIN)).status == 404


async def test_the_admin_api_needs_the_admin_key(gateway, vendor):
    without = await gateway(policy(vendor, dead_letter=True))
    response = await without.get("/_gateway/dead-letters")
    assert response.status == 403 and (await response.json())["type"] == "forbidden"


async def test_the_admin_api_refuses_a_wrong_key(gateway, vendor):
    client = await gateway(policy(vendor, dead_letter=True), config={"admin_key": "${ADMIN}"}, env=ADMIN_ENV)
    for headers in ({}, {"X-Gateway-Admin-Key": "nope"}, {"Authorization": "Bearer nope"}):
        assert (await client.get("/_gateway/dead-letters", headers=headers)).status == 401
    assert (await client.get("/_gateway/dead-letters", headers={"Authorization": "Bearer admin-key-1"})).status == 200


@pytest.mark.parametrize("storage", ["memory", "redis"])
async def test_dead_letters_survive_kill_9(gateway_process, vendor, redis_server, tmp_path, storage):
    config = {"admin_key": "${ADMIN}", "data_dir": str(tmp_path / "state"),
              "storage": redis_server.url if storage == "redis" else "memory"}
    p = policy(vendor, dead_letter=True)
    first = gateway_process(p, config=config, env=ADMIN_ENV)
    async with aiohttp.ClientSession() as session:
        vendor.script(503)
        assert (await session.post(first.url + "/v/orders", data=b"order-1")).status == 503
        os.kill(first.process.pid, signal.SIGKILL)
        first.process.wait()
        second = gateway_process(p, config=config, env=ADMIN_ENV)
        listing = await (await session.get(second.url + "/_gateway/dead-letters", headers=ADMIN)).json()
        [entry] = listing["dead_letters"]
        assert entry["path"] == "/orders"
        result = await (await session.post(second.url + f"/_gateway/dead-letters/{entry['id']}/replay", headers=ADMIN)).json()
        assert result["outcome"] == "delivered"
    assert vendor.last.body == b"order-1"


async def test_the_dead_letters_command_lists_and_replays(gateway_process, vendor):
    import subprocess
    import sys

    gw = gateway_process(policy(vendor, dead_letter=True), config={"admin_key": "${ADMIN}"}, env=ADMIN_ENV)
    async with aiohttp.ClientSession() as session:
        vendor.script(500)
        assert (await session.patch(gw.url + "/v/items/3", data=b"{}")).status == 500

    def command(*args, key="admin-key-1"):
        env = {k: v for k, v in os.environ.items() if k != "GATEWAY_ADMIN_KEY"}
        if key:
            env["GATEWAY_ADMIN_KEY"] = key
        return subprocess.run([sys.executable, "-m", "gateway", "dead-letters", "--url", gw.url, *args],
                              capture_output=True, text=True, env=env, timeout=60)

    listed = await asyncio.to_thread(command, "list")
    assert listed.returncode == 0 and "PATCH  /items/3  500" in listed.stdout
    entry_id = listed.stdout.split()[0]
    assert (await asyncio.to_thread(command, "list", key="")).returncode == 2
    assert "401" in (await asyncio.to_thread(command, "list", key="wrong")).stderr
    replayed = await asyncio.to_thread(command, "replay", entry_id)
    assert replayed.returncode == 0 and f"{entry_id}: delivered (200, 1 attempt(s))" in replayed.stdout


@pytest.mark.parametrize("storage", ["memory", "redis"])
async def test_a_dead_letter_is_replayed_once_at_a_time_and_stays_deleted(gateway, vendor, redis_server, storage):
    config = {"admin_key": "${ADMIN}", "storage": redis_server.url if storage == "redis" else "memory"}
    client = await gateway(policy(vendor, dead_letter=True), config=config, env=ADMIN_ENV)
    vendor.script(500)
    await client.post("/v/orders", data=b"1")
    [entry] = (await (await client.get("/_gateway/dead-letters", headers=ADMIN)).json())["dead_letters"]
    url = f"/_gateway/dead-letters/{entry['id']}"

    arrived, release = asyncio.Event(), asyncio.Event()

    async def held_failure(request):
        from aiohttp import web

        arrived.set()
        await release.wait()
        return web.Response(status=500)

    vendor.script(held_failure)
    first = asyncio.create_task(client.post(url + "/replay", headers=ADMIN))
    await asyncio.wait_for(arrived.wait(), 30)
    second = await client.post(url + "/replay", headers=ADMIN)
    assert second.status == 409 and (await second.json())["type"] == "replay-in-progress"
    assert (await client.delete(url, headers=ADMIN)).status == 204  # deleted while the replay runs
    release.set()
    assert (await (await first).json())["outcome"] == "failed"
    assert (await client.get(url, headers=ADMIN)).status == 404
    assert len(vendor.received) == 2


async def test_a_long_error_answer_to_a_write_is_kept_and_streamed_whole(gateway, vendor):
    client = await gateway(policy(vendor, dead_letter=True), config={"admin_key": "${ADMIN}"}, env=ADMIN_ENV)

    async def failing_stream(request):
        from aiohttp import web

        out = web.StreamResponse(status=500)
        await out.prepare(request)  # chunked: no length known up front
        for _ in range(30):
            await out.write(b"e" * 100_000)
        await out.write_eof()
        return out

    vendor.script(failing_stream)
    response = await client.post("/v/x", data=b"1")
    assert response.status == 500 and len(await response.read()) == 3_000_000
    [entry] = (await (await client.get("/_gateway/dead-letters", headers=ADMIN)).json())["dead_letters"]
    assert entry["error"].startswith("upstream 500: eeee") and len(entry["error"]) < 2100


async def raw_vendor(answer: bytes, *, reset: bool = False, stall: asyncio.Event | None = None):
    """A vendor that reads one request, writes ``answer`` as it is, then hangs up (or
    resets the connection, or with ``stall`` sends nothing more until it is set); returns
    its server and URL."""
    import socket
    import struct

    async def serve(reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        await reader.readexactly(length)
        writer.write(answer)
        await writer.drain()
        if stall is not None:
            await stall.wait()
        await asyncio.sleep(0.05)
        if reset:
            writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


@pytest.mark.parametrize("reset", [False, True], ids=["hang-up", "reset"])
@pytest.mark.parametrize("status", [201, 500])
async def test_a_write_whose_answer_breaks_off_is_kept(gateway, status, reset):
    server, url = await raw_vendor(
        f"HTTP/1.1 {status} X\r\nContent-Length: 1000\r\n\r\n".encode() + b"a" * 100, reset=reset
    )
    async with server:
        client = await gateway({"vendor": "v", "upstream": url, "dead_letter": True},
                               config={"admin_key": "${ADMIN}"}, env=ADMIN_ENV)
        async with client.post("/v/orders", data=b'{"n": 1}') as response:
            assert response.status == status  # the answer streams: its head went out first
            with pytest.raises(aiohttp.ClientPayloadError):
                await response.read()
        [entry] = (await (await client.get("/_gateway/dead-letters", headers=ADMIN)).json())["dead_letters"]
    # The vendor's status is kept: a 201 may have been done, and replaying it would do it twice.
    assert (entry["method"], entry["status"]) == ("POST", status)
    assert entry["error"] == f"upstream {status} (answer broke off after 100 of 1000 bytes)"


async def test_a_write_whose_answer_stops_coming_is_kept_after_the_policys_timeout(gateway):
    stall = asyncio.Event()
    server, url = await raw_vendor(b"HTTP/1.1 201 X\r\nContent-Length: 1000\r\n\r\n" + b"a" * 100, stall=stall)
    async with server:
        client = await gateway({"vendor": "v", "upstream": url, "dead_letter": True, "timeout": "1s"},
                               config={"admin_key": "${ADMIN}"}, env=ADMIN_ENV)
        try:
            async with client.post("/v/orders", data=b'{"n": 1}') as response:
                assert response.status == 201
                with pytest.raises(aiohttp.ClientPayloadError):
                    await response.read()
            [entry] = (await (await client.get("/_gateway/dead-letters", headers=ADMIN)).json())["dead_letters"]
        finally:
            stall.set()
    assert entry["error"] == "upstream 201 (answer stalled after 100 of 1000 bytes)"


async def test_a_long_streamed_answer_to_a_write_that_breaks_off_is_kept(gateway):
    server, url = await raw_vendor(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"b" * 300_000)
    async with server:
        client = await gateway({"vendor": "v", "upstream": url, "dead_letter": True},
                               config={"admin_key": "${ADMIN}"}, env=ADMIN_ENV)
        async with client.put("/v/files/7", data=b"x") as response:
            assert response.status == 200  # the head went out before the body broke off
            with pytest.raises(aiohttp.ClientPayloadError):
                await response.read()
        [entry] = (await (await client.get("/_gateway/dead-letters", headers=ADMIN)).json())["dead_letters"]
        text = await (await client.get("/metrics")).text()
    assert (entry["method"], entry["status"]) == ("PUT", 200)
    assert entry["error"] == "upstream 200 (answer broke off after 300000 of 1000000 bytes)"
    assert 'gateway_errors_total{type="upstream-unavailable",vendor="v"} 1.0' in text
    assert 'method="PUT",status="200"' in text and 'status="499"' not in text


async def test_a_read_whose_answer_breaks_off_is_not_kept(gateway):
    server, url = await raw_vendor(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"c" * 10)
    async with server:
        client = await gateway({"vendor": "v", "upstream": url, "dead_letter": True},
                               config={"admin_key": "${ADMIN}"}, env=ADMIN_ENV)
        async with client.get("/v/orders/1") as response:
            with pytest.raises(aiohttp.ClientPayloadError):
                await response.read()
        assert (await (await client.get("/_gateway/dead-letters", headers=ADMIN)).json())["dead_letters"] == []
