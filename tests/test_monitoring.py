"""What operators are told: JSON log lines (never a secret), the last success and budget
forecasts in metrics and status, and notifications to a webhook that never slow a request."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from typing import Any

import pytest

from aiohttp import web

from gateway.core.budget import BUCKET, FIXED, ROLLING
from gateway.core.forecast import Consumption, exhausts_in
from gateway.core.notices import AnswerCounts, Throttle, success_verdict

CANARIES = {
    "API_KEY": "canary-apikey-7f3a",
    "CALLER_KEY": "canary-caller-91bd",
    "ADMIN_KEY": "canary-admin-55e2",
}


class Receiver:
    """A Slack-compatible incoming webhook on loopback."""

    def __init__(self, hang: bool = False, status: int = 200) -> None:
        self.texts: list[str] = []
        self.hang = hang
        self.status = status

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/hook", self.post)
        return app

    async def post(self, request: web.Request) -> web.Response:
        self.texts.append((await request.json())["text"])
        if self.hang:
            await asyncio.sleep(60)
        return web.Response(status=self.status)

    async def told(self, *words: str, deadline: float = 30.0) -> str:
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            for text in self.texts:
                if all(w in text for w in words):
                    return text
            await asyncio.sleep(0.05)
        raise AssertionError(f"no message with {words}: {self.texts}")


def test_json_logs_one_object_a_line_and_no_secret(gateway_process, tmp_path) -> None:
    import http.server
    import threading

    class Vendor(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            code = 500 if "fail" in self.path else 200
            self.send_response(code)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        do_POST = do_GET

        def log_message(self, *args: Any) -> None:
            pass

    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Vendor)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    try:
        policy = {
            "vendor": "shop", "upstream": f"http://127.0.0.1:{upstream.server_port}",
            "credentials": {"type": "api_key", "query": "key", "value": "${API_KEY}"},
            "dead_letter": True,
        }
        config = {"log_format": "json", "admin_key": "${ADMIN_KEY}",
                  "callers": [{"name": "crm-sync", "key": "${CALLER_KEY}"}]}
        proc = gateway_process(policy, config=config, env=CANARIES)
        key = {"Authorization": f"Bearer {CANARIES['CALLER_KEY']}", "X-Request-Id": "req-json-1"}
        for path, method in (("/shop/contacts?email=ann@example.com", "GET"), ("/shop/fail", "POST"),
                             ("/nowhere/x", "GET")):
            request = urllib.request.Request(proc.url + path, headers=key, method=method, data=b"{}" if method == "POST" else None)
            try:
                urllib.request.urlopen(request, timeout=30).read()
            except urllib.error.HTTPError as err:
                err.read()
        code, output = proc.stop()
    finally:
        upstream.shutdown()
        upstream.server_close()
    assert code == 0
    lines = [json.loads(line) for line in output.splitlines() if line.strip()]
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in lines)
    first = next(line for line in lines if line.get("request_id") == "req-json-1" and "status" in line)
    assert first["vendor"] == "shop" and first["status"] == 200 and first["caller"] == "crm-sync"
    assert first["path"] == "/shop/contacts" and first["attempts"] == 1 and "upstream_ms" in first
    assert any(line.get("error") == "unknown-vendor" for line in lines)
    assert any("dead letter" in line["message"] for line in lines)
    for secret in [*CANARIES.values(), "ann@example.com"]:
        assert secret not in output


async def test_last_success_and_budget_forecast(gateway, vendor) -> None:
    policy = {"vendor": "shop", "upstream": vendor.url,
              "budgets": [{"name": "daily", "limit": 8, "per": "1d", "window": "rolling"},
                          {"name": "burst", "limit": 10, "per": "1s"}]}
    client = await gateway(policy)
    before = time.time()
    for _ in range(5):
        assert (await client.get("/shop/x")).status == 200
    metrics = await (await client.get("/metrics")).text()
    stamp = next(float(line.split()[-1]) for line in metrics.splitlines()
                 if line.startswith('gateway_last_success_timestamp_seconds{vendor="shop"}'))
    assert before - 1 <= stamp <= time.time() + 1
    exhaustion = [line for line in metrics.splitlines() if line.startswith("gateway_budget_exhaustion_seconds{")]
    assert len(exhaustion) == 1 and 'budget="daily"' in exhaustion[0]  # a bucket refills: no forecast
    status = await (await client.get("/_gateway/status")).json()
    budgets = {b["name"]: b for b in status["vendors"]["shop"]["budgets"]}
    # 5 in the last hour: the 3 left last 36 minutes at that rate.
    assert budgets["daily"]["exhausts_in"] == pytest.approx(3 * 3600 / 5, rel=0.01)
    assert budgets["burst"]["exhausts_in"] is None


async def test_breaker_opened_and_dead_letters_kept_are_told(gateway, vendor, aiohttp_server) -> None:
    receiver = Receiver()
    hook = await aiohttp_server(receiver.app())
    policy = {"vendor": "shop", "upstream": vendor.url, "dead_letter": True,
              "circuit_breaker": {"failure_ratio": 0.5, "window": "1m", "min_calls": 2, "open_for": "1m"}}
    client = await gateway(policy, config={"notify": {"url": "${HOOK}"}},
                           env={"HOOK": f"http://127.0.0.1:{hook.port}/hook"})
    vendor.script(500, 500, 500)
    for _ in range(3):
        await client.post("/shop/orders", data=b"{}")
    assert "shop" in await receiver.told("breaker", "opened")
    assert "shop" in await receiver.told("dead letters")
    assert len([t for t in receiver.texts if "dead letters" in t]) == 1  # one per 10 min


async def test_a_vendor_refusing_our_credential_is_told(gateway, vendor, aiohttp_server) -> None:
    receiver = Receiver()
    hook = await aiohttp_server(receiver.app())
    policy = {"vendor": "shop", "upstream": vendor.url, "auth_failures": {"after": 2, "probe_every": "10m"}}
    client = await gateway(policy, config={"notify": {"url": "${HOOK}"}},
                           env={"HOOK": f"http://127.0.0.1:{hook.port}/hook"})
    vendor.script(401, 401)
    assert [(await client.get("/shop/x")).status for _ in range(3)] == [401, 401, 503]
    assert "shop" in await receiver.told("refuses our credential")


async def test_a_failed_reload_is_told(gateway, vendor, aiohttp_server, tmp_path) -> None:
    receiver = Receiver()
    hook = await aiohttp_server(receiver.app())
    client = await gateway({"vendor": "shop", "upstream": vendor.url},
                           config={"notify": {"url": "${HOOK}"}, "admin_key": "${ADMIN}"},
                           env={"HOOK": f"http://127.0.0.1:{hook.port}/hook", "ADMIN": "admin-key-123"})
    (tmp_path / "policies" / "shop.yaml").write_text(f"vendor: shop\nupstrem: {vendor.url}\n")
    answer = await client.post("/_gateway/reload", headers={"X-Gateway-Admin-Key": "admin-key-123"})
    assert answer.status == 422
    assert "shop.yaml:2: upstrem" in await receiver.told("reload failed")


async def test_a_hanging_webhook_never_slows_requests(gateway, vendor, aiohttp_server) -> None:
    receiver = Receiver(hang=True)
    hook = await aiohttp_server(receiver.app())
    policy = {"vendor": "shop", "upstream": vendor.url, "dead_letter": True}
    client = await gateway(policy, config={"notify": {"url": "${HOOK}"}},
                           env={"HOOK": f"http://127.0.0.1:{hook.port}/hook"})
    vendor.script(500)
    assert (await client.post("/shop/orders", data=b"{}")).status == 500
    await receiver.told("dead letters")  # the webhook now hangs on it
    started = time.monotonic()
    for _ in range(5):
        assert (await client.get("/shop/x")).status == 200
    assert time.monotonic() - started < 4.0  # well under the webhook's 5 s timeout


def test_throttle_one_message_per_event_and_vendor_per_ten_minutes() -> None:
    throttle = Throttle()
    assert throttle.allows("breaker_open", "shop", 1000.0)
    assert not throttle.allows("breaker_open", "shop", 1599.0)
    assert throttle.allows("breaker_open", "crm", 1001.0)
    assert throttle.allows("dead_letters", "shop", 1002.0)
    assert throttle.allows("breaker_open", "shop", 1600.0)


def test_forecast_from_the_last_hour() -> None:
    spent = Consumption()
    for second in range(0, 3600, 36):  # 100 units in the hour
        spent.add(1, 10_000.0 + second)
    rate = spent.rate(13_600.0)
    assert abs(rate - 100 / 3600) < 1e-3
    assert exhausts_in(FIXED, 1000, 86400, 50, 86400, rate) == 50 / rate
    assert exhausts_in(FIXED, 1000, 86400, 500, 3600, rate) is None  # the window resets first
    assert exhausts_in(BUCKET, 10, 1, 0, 1, rate) is None
    assert exhausts_in(ROLLING, 100_000, 86400, 500, 60, rate) is None  # never holds the limit at this rate
    assert exhausts_in(ROLLING, 1000, 86400, 500, 60, rate) == 500 / rate
    assert spent.rate(20_000.0) == 0.0
    burst = Consumption()
    for second in range(12):  # a process's first burst is no hourly rate of 720
        burst.add(1, 50_000.0 + second)
    assert burst.rate(50_060.0) == 12 / 3600


def test_success_rate_from_the_process_counts() -> None:
    counts = AnswerCounts()
    for i in range(100):
        counts.answered("shop", i % 10 != 0, 5000.0 + i)
    answers, rate = counts.success_rate("shop", 5100.0)
    assert answers == 100 and abs(rate - 0.9) < 1e-9
    assert success_verdict(answers, rate, False)
    assert not success_verdict(5, 0.0, False)  # too few to say
    assert counts.success_rate("shop", 9000.0) == (0, 1.0)
