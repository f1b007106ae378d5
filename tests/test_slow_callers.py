"""Slow callers: a request head must arrive within header_timeout, an idle keep-alive
connection is closed after keepalive_timeout, a body that stalls ends its request, and
none of it slows the callers that behave. Raw sockets, so that nothing is normalised."""

import asyncio
import resource
import time

import aiohttp
import orjson
import pytest

GENEROUS = 30.0  # seconds: a deadline a loaded CI box keeps; nothing here waits for it unless it fails


def policy(vendor, **extra):
    return {"vendor": "v", "upstream": vendor.url, **extra}


async def connect(port):
    return await asyncio.open_connection("127.0.0.1", port)


async def read_until_closed(reader) -> tuple[bytes, float]:
    """All the gateway sends until it closes the connection, and when it closed it.

    Read as it arrives: bytes left unread when a write of ours meets the closed
    connection would be lost to its reset."""
    data = bytearray()
    try:
        while chunk := await asyncio.wait_for(reader.read(65536), GENEROUS):
            data += chunk
    except ConnectionError:
        pass
    return bytes(data), time.monotonic()


async def drip(writer, data: bytes, every: float) -> None:
    """Send ``data`` one byte at a time; stops quietly when the gateway has closed."""
    try:
        for byte in data:
            if writer.is_closing():
                return
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(every)
    except ConnectionError:
        pass


async def dripping(port: int, data: bytes, every: float):
    """A caller dripping ``data``: a task for what it reads until closed, one for its sending."""
    reader, writer = await connect(port)
    return writer, asyncio.create_task(read_until_closed(reader)), asyncio.create_task(drip(writer, data, every))


def problem_of(answer: bytes) -> dict:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"application/problem+json" in head
    return orjson.loads(body)


SLOW_HEAD = b"GET /v/x HTTP/1.1\r\nHost: gateway\r\nX-Padding: " + b"p" * 500 + b"\r\n\r\n"


async def test_a_head_dripped_byte_by_byte_gets_408_and_the_connection_closed(gateway, vendor):
    client = await gateway(policy(vendor), config={"header_timeout": "1s"})
    started = time.monotonic()
    writer, reading, sending = await dripping(client.port, SLOW_HEAD, 0.1)  # 50 s for the whole head
    answer, closed = await reading
    sending.cancel()
    writer.close()
    assert closed - started >= 1.0  # timers never fire early
    assert answer.startswith(b"HTTP/1.1 408 ")
    problem = problem_of(answer)
    assert problem["type"] == "request-timeout" and problem["status"] == 408
    assert "within 1s" in problem["detail"]
    assert vendor.received == []
    text = await (await client.get("/metrics")).text()
    assert 'gateway_errors_total{type="request-timeout",vendor="unknown"} 1.0' in text
    assert 'gateway_requests_total{caller="unauthenticated",method="OTHER",status="408",vendor="unknown"} 1.0' in text


async def test_a_silent_connection_is_closed_without_an_answer(gateway, vendor):
    client = await gateway(policy(vendor), config={"header_timeout": "1s"})
    reader, writer = await connect(client.port)
    started = time.monotonic()
    answer, closed = await read_until_closed(reader)
    writer.close()
    # Nothing was asked, so nothing is answered: a browser's unused preconnect would
    # otherwise take a 408 for the answer to its next request.
    assert answer == b"" and closed - started >= 1.0


async def test_an_idle_keep_alive_connection_is_closed_after_keepalive_timeout(gateway, vendor):
    client = await gateway(policy(vendor), config={"keepalive_timeout": "1s", "header_timeout": "60s"})
    reader, writer = await connect(client.port)
    asked = time.monotonic()  # the idle clock starts after this, with the answer
    writer.write(b"GET /v/x HTTP/1.1\r\nHost: gateway\r\n\r\n")
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), GENEROUS)
    assert head.startswith(b"HTTP/1.1 200 ") and b"Connection: close" not in head
    rest, closed = await read_until_closed(reader)
    writer.close()
    length = int(next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")).split(b":")[1])
    assert len(rest) == length  # the answer's body, then the close: no 408 on an idle connection
    assert closed - asked >= 1.0


async def test_the_idle_clock_does_not_cut_a_head_in_progress(gateway, vendor):
    # keepalive_timeout is far shorter than the head takes, header_timeout far longer.
    client = await gateway(policy(vendor), config={"keepalive_timeout": "1s", "header_timeout": "60s"})
    reader, writer = await connect(client.port)
    head = b"GET /v/slowly HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n"
    await drip(writer, head, 3.0 / len(head))  # about 3 s in all
    answer, _ = await read_until_closed(reader)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200 ") and vendor.last.raw_path == "/slowly"


async def test_each_request_on_a_connection_gets_its_own_head_deadline(gateway, vendor):
    client = await gateway(policy(vendor), config={"header_timeout": "2s", "keepalive_timeout": "60s"})
    reader, writer = await connect(client.port)
    for n in range(3):  # 3 s of requests in all: more than one head deadline, each head in time
        writer.write(f"GET /v/{n} HTTP/1.1\r\nHost: gateway\r\n\r\n".encode())
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), GENEROUS)
        assert head.startswith(b"HTTP/1.1 200 ")
        await reader.readuntil(b"}")
        await asyncio.sleep(1.0)
    writer.close()
    assert [r.raw_path for r in vendor.received] == ["/0", "/1", "/2"]


async def test_a_body_that_stalls_gets_408_and_never_reaches_the_vendor(gateway, vendor):
    client = await gateway(policy(vendor), config={"header_timeout": "1s"})
    reader, writer = await connect(client.port)
    started = time.monotonic()
    writer.write(b"POST /v/orders HTTP/1.1\r\nHost: gateway\r\nContent-Length: 100\r\n\r\n{\"a\":")
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), GENEROUS)
    assert time.monotonic() - started >= 1.0
    assert head.startswith(b"HTTP/1.1 408 ")
    body = await asyncio.wait_for(reader.read(), GENEROUS)  # then the gateway hangs up
    writer.close()
    # Not kept open reading the rest of the stalled body (aiohttp lingers 10 s).
    assert time.monotonic() - started < 8
    assert b"request-timeout" in body
    assert vendor.received == []


async def test_a_streamed_upload_that_stalls_ends_its_attempt_with_408(gateway, vendor):
    # Past the 1 MiB buffered part the upload streams to the vendor: the stall fails the
    # attempt under way, and the caller hears why.
    client = await gateway(policy(vendor), config={"header_timeout": "1s", "max_body": "10MB"})
    reader, writer = await connect(client.port)
    writer.write(b"PUT /v/files/1 HTTP/1.1\r\nHost: gateway\r\nContent-Length: 4000000\r\n\r\n" + b"x" * 1_500_000)
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), GENEROUS)
    body = await reader.readuntil(b"}")
    writer.close()
    assert head.startswith(b"HTTP/1.1 408 ")
    assert orjson.loads(body)["detail"] == "the request body stalled: no bytes for 1s"
    assert vendor.received == [] or len(vendor.received[0].body) < 4_000_000  # the vendor never had it whole


def test_the_timeouts_have_defaults_and_must_be_durations(settings_from):
    from gateway.errors import ConfigError

    some = {"vendor": "v", "upstream": "https://v.example"}
    config = settings_from(some, config={}).config
    assert (config.header_timeout, config.keepalive_timeout) == (10.0, 75.0)
    config = settings_from(some, config={"header_timeout": "2s", "keepalive_timeout": "250ms"}).config
    assert (config.header_timeout, config.keepalive_timeout) == (2.0, 0.25)
    for bad in ({"header_timeout": 0}, {"keepalive_timeout": "soon"}):
        with pytest.raises(ConfigError, match=f"{next(iter(bad))}: "):
            settings_from(some, config=bad)


@pytest.fixture
def open_files():
    """Sets this process's soft limit on open files (what a process started now inherits);
    the original comes back after the test."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 4096:
        pytest.skip(f"the hard limit on open files ({hard}) leaves no room for 1000 slow callers")

    def set_soft(limit: int) -> int:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
        return hard

    yield set_soft
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _open_files_limit(pid: int) -> int:
    with open(f"/proc/{pid}/limits") as limits:
        line = next(l for l in limits if l.startswith("Max open files"))
    return int(line.split()[3])


@pytest.mark.slow
async def test_a_thousand_slow_callers_are_closed_while_others_are_served(gateway_process, vendor, open_files):
    hard = open_files(1024)  # the usual default, which 1000 held connections would exhaust
    gw = gateway_process(policy(vendor), config={"header_timeout": "2s"})
    open_files(min(hard, 8192))  # room for this test's own thousand sockets
    assert _open_files_limit(gw.process.pid) >= min(hard, 4096)  # the gateway lifted its own
    slow = [await dripping(gw.port, SLOW_HEAD, 0.5) for _ in range(1000)]
    served = []
    async with aiohttp.ClientSession() as session:
        for _ in range(20):
            started = time.monotonic()
            async with session.get(gw.url + "/v/x") as response:
                await response.read()
                served.append((response.status, time.monotonic() - started))
            await asyncio.sleep(0.1)
        answers = await asyncio.gather(*(reading for _, reading, _ in slow))
        for writer, _, sending in slow:
            sending.cancel()
            writer.close()
        text = await (await session.get(gw.url + "/metrics")).text()
    assert [status for status, _ in served] == [200] * 20
    assert max(seconds for _, seconds in served) < 5.0  # milliseconds when idle; 1000 heads drip meanwhile
    assert all(answer.startswith(b"HTTP/1.1 408 ") for answer, _ in answers)
    assert 'gateway_errors_total{type="request-timeout",vendor="unknown"} 1000.0' in text
    assert len(vendor.received) == 20


@pytest.mark.slow
async def test_gateway_serve_applies_both_timeouts(gateway_process, vendor):
    gw = gateway_process(policy(vendor), config={"header_timeout": "2s", "keepalive_timeout": "2s"})
    started = time.monotonic()
    slow, slow_reading, sending = await dripping(gw.port, SLOW_HEAD, 0.5)
    idle_reader, idle = await connect(gw.port)
    idle.write(b"GET /v/x HTTP/1.1\r\nHost: gateway\r\n\r\n")
    await idle.drain()
    silent_reader, silent = await connect(gw.port)
    (slow_answer, _), (idle_answer, _), (silent_answer, _) = await asyncio.gather(
        slow_reading, read_until_closed(idle_reader), read_until_closed(silent_reader)
    )
    sending.cancel()
    for writer in (slow, idle, silent):
        writer.close()
    assert time.monotonic() - started < GENEROUS
    assert slow_answer.startswith(b"HTTP/1.1 408 ")
    assert idle_answer.startswith(b"HTTP/1.1 200 ") and idle_answer.count(b"HTTP/1.1 ") == 1  # no 408 after it
    assert silent_answer == b""
    code, output = await asyncio.to_thread(gw.stop)
    assert code == 0 and "Traceback" not in output and " ERROR " not in output, output
