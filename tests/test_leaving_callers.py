"""Callers that leave, mid-upload, mid-download or while their request waits for budget:
499 caller-gone in the metrics and an INFO line, never an ERROR, a traceback or a 500.

Each runs against a real `gateway serve` (aiohttp lets the handler run on when its caller
leaves) and against the in-process server of the other tests (which cancels it)."""

import asyncio
import logging
import re
import time

import aiohttp
import pytest
from aiohttp import web

GENEROUS = 30.0


def policy(vendor, **extra):
    return {"vendor": "v", "upstream": vendor.url, **extra}


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the series of a /metrics page that have these labels."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{"):
            found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}", 1)[0]))
            if all(found.get(k) == v for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
    return total


class Gateway:
    """One gateway under test, however it runs: its port, its metrics, its log."""

    def __init__(self, port: int, url: str, log) -> None:
        self.port = port
        self.url = url
        self._log = log

    async def metrics(self) -> str:
        async with aiohttp.ClientSession() as session, session.get(self.url + "/metrics") as response:
            return await response.text()

    async def wait_for(self, name: str, value: float, **labels: str) -> str:
        deadline = time.monotonic() + GENEROUS
        while True:
            text = await self.metrics()
            if metric(text, name, **labels) >= value or time.monotonic() > deadline:
                return text
            await asyncio.sleep(0.1)

    def log(self) -> str:
        return self._log()


@pytest.fixture(params=["serve", "in-process"])
async def start(request, gateway, gateway_process, caplog):
    caplog.set_level(logging.INFO)

    async def started(*policies, config=None) -> Gateway:
        if request.param == "serve":
            proc = gateway_process(*policies, config=config)
            return Gateway(proc.port, proc.url, proc.log.read_text)
        client = await gateway(*policies, config=config)
        return Gateway(client.port, str(client.make_url("")).rstrip("/"), lambda: _records(caplog))

    return started


def _records(caplog) -> str:
    return "\n".join(f"{r.levelname} {r.name} {r.getMessage()}" + ("\nTraceback" if r.exc_info else "")
                     for r in caplog.records)


def assert_quiet(gw: Gateway, text: str) -> None:
    """Nothing of ours counted 500, nothing logged as an error."""
    assert metric(text, "gateway_requests_total", status="500") == 0
    log = gw.log()
    assert "Traceback" not in log and "ERROR" not in log, log


async def hang_up(port: int, data: bytes) -> None:
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    await asyncio.sleep(0.3)
    writer.transport.abort()


async def test_callers_hanging_up_mid_upload(start, vendor):
    gw = await start(policy(vendor), config={"max_body": "10MB"})
    buffered = b"POST /v/orders HTTP/1.1\r\nHost: gateway\r\nContent-Length: 100000\r\n\r\n" + b"o" * 1000
    # Past the 1 MiB kept whole, the upload is streaming to the vendor when the caller goes.
    streaming = b"PUT /v/files/1 HTTP/1.1\r\nHost: gateway\r\nContent-Length: 5000000\r\n\r\n" + b"f" * 1_500_000
    await asyncio.gather(*(hang_up(gw.port, buffered) for _ in range(10)), hang_up(gw.port, streaming))
    text = await gw.wait_for("gateway_requests_total", 11, status="499")
    assert metric(text, "gateway_requests_total", status="499") == 11
    assert metric(text, "gateway_errors_total", type="caller-gone") == 11
    assert_quiet(gw, text)
    assert "caller left" in gw.log()
    assert [r.method for r in vendor.received] in ([], ["PUT"])  # the PUT may have begun


async def test_a_caller_leaving_mid_download(start, vendor):
    sent = []

    async def slow_export(request):
        out = web.StreamResponse()
        out.content_length = 100 * 65536
        await out.prepare(request)
        try:
            for _ in range(100):
                await out.write(b"e" * 65536)
                sent.append(1)
                await asyncio.sleep(0.05)
        except ConnectionError:
            pass
        return out

    vendor.script(slow_export)
    gw = await start(policy(vendor))
    async with aiohttp.ClientSession() as session:
        response = await session.get(gw.url + "/v/export")
        assert response.status == 200
        await response.content.readexactly(65536)
        response.close()
    text = await gw.wait_for("gateway_requests_total", 1, status="499")
    assert metric(text, "gateway_requests_total", status="499") == 1
    assert metric(text, "gateway_errors_total", type="caller-gone") == 1
    assert_quiet(gw, text)
    assert len(sent) < 100  # the vendor's answer was dropped, not read to the end


async def test_a_caller_leaving_while_waiting_for_budget(start, vendor):
    budget = {"name": "slow", "limit": 1, "per": "20s"}  # the second request waits up to 20 s
    gw = await start(policy(vendor, budgets=[budget], when_exhausted={"wait": "30s"}))
    async with aiohttp.ClientSession() as session:
        assert (await session.get(gw.url + "/v/first")).status == 200
        waiting = asyncio.create_task(session.get(gw.url + "/v/second"))
        await asyncio.sleep(0.5)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
    text = await gw.wait_for("gateway_requests_total", 1, status="499")
    assert metric(text, "gateway_requests_total", status="499") == 1
    assert metric(text, "gateway_errors_total", type="caller-gone") == 1
    assert_quiet(gw, text)
    assert [r.raw_path for r in vendor.received] == ["/first"]
