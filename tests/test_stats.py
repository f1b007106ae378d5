"""The shared per-vendor stats in /_gateway/status: counted from real traffic, the same in
every process on one Redis, kept across a restart of the embedded mode, and never in the
way of a request when storage fails."""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.request
from typing import Any

from gateway.core.stats import CLASSES, FIRST_BUCKET, bucket
from gateway.errors import StorageError
from gateway.stats import Stats
from tests.conftest import free_port

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def errors(**counted: int) -> dict[str, int]:
    return {**{name: 0 for name in CLASSES}, **counted}


async def status_of(client: Any) -> dict[str, Any]:
    response = await client.get("/_gateway/status")
    assert response.status == 200
    return dict(await response.json())


async def test_answers_are_counted_per_vendor_and_minute_and_kept_until_a_flush_succeeds() -> None:
    added: list[tuple[dict[tuple[str, int], dict[str, int]], dict[str, float]]] = []

    failing = [True]

    class Store:
        async def add_stats(self, minutes: Any, successes: Any) -> None:
            if failing.pop():
                raise StorageError("redis stats write failed: ConnectionError")
            added.append((dict(minutes), dict(successes)))

        async def read_stats(self, vendors: Any, spans: Any) -> Any:
            return {}

    stats = Stats(Store(), clock=lambda: 700.0)
    stats.record("crm", 200, False, 0.01, 600.0)
    stats.record("crm", 500, False, 0.01, 659.9)
    stats.record("crm", 429, True, 0.0, 660.0)  # the next minute
    await stats.flush()  # fails: the answers stay pending
    stats.record("mail", 503, True, 0.0, 660.5)
    failing.append(False)
    await stats.flush()
    await stats.flush()  # nothing more to add
    [(minutes, successes)] = added
    ms = f"b{bucket(0.01) - FIRST_BUCKET}"
    assert minutes == {("crm", 10): {"requests": 2, "ok": 1, "vendor_5xx": 1, ms: 2},
                       ("crm", 11): {"requests": 1, "gateway_429": 1, "b0": 1},
                       ("mail", 11): {"requests": 1, "gateway_503": 1, "b0": 1}}
    assert successes == {"crm": 600.0}


async def test_status_counts_answers_by_class_at_once(gateway, vendor) -> None:
    client = await gateway(
        {"vendor": "crm", "upstream": vendor.url, "budgets": [{"name": "b", "limit": 9, "per": "1h"}]},
        {"vendor": "gone", "upstream": f"http://127.0.0.1:{free_port()}"},
    )
    vendor.script(200, 200, 404, 429, 500, 502)
    for _ in range(6):
        await client.get("/crm/x")
    for _ in range(4):  # three more good ones, then the budget's 429
        await client.get("/crm/x")
    assert (await client.get("/gone/x")).status == 502
    stats = (await status_of(client))["vendors"]
    crm = stats["crm"]["stats"]
    for window in ("5m", "1h", "24h"):
        shown = crm[window]
        assert shown["requests"] == 10
        assert shown["success_rate"] == 0.5
        assert shown["errors"] == errors(vendor_4xx=1, vendor_429=1, vendor_5xx=2, gateway_429=1)
        assert shown["latency_ms"]["p50"] is not None and shown["latency_ms"]["p95"] >= shown["latency_ms"]["p50"]
        assert ISO.match(shown["last_success"])
    assert ISO.match(crm["last_success"])
    gone = stats["gone"]["stats"]["1h"]
    assert gone["requests"] == 1 and gone["success_rate"] == 0.0 and gone["errors"] == errors(connect=1)
    assert gone["last_success"] is None


async def test_embedded_stats_survive_a_restart(gateway, vendor) -> None:
    policy = {"vendor": "crm", "upstream": vendor.url}
    client = await gateway(policy)
    vendor.script(200, 200, 200, 500)
    for _ in range(4):
        await client.get("/crm/x")
    before = (await status_of(client))["vendors"]["crm"]["stats"]
    await client.close()  # the gateway stops: its last flush

    again = await gateway(policy)  # the same data_dir
    after = (await status_of(again))["vendors"]["crm"]["stats"]
    assert after["1h"]["requests"] == 4 and after["1h"]["success_rate"] == 0.75
    assert after["last_success"] == before["last_success"]


async def test_a_redis_outage_loses_no_request_and_status_still_answers(gateway, vendor, redis_server) -> None:
    client = await gateway({"vendor": "crm", "upstream": vendor.url}, config={"storage": redis_server.url})
    assert (await client.get("/crm/x")).status == 200
    assert (await status_of(client))["vendors"]["crm"]["stats"]["1h"]["requests"] == 1  # now in Redis
    redis_server.stop()
    for _ in range(5):
        assert (await client.get("/crm/x")).status == 200
    body = await status_of(client)
    assert body["vendors"]["crm"]["stats"] is None
    assert "redis" in body["stats_unavailable"]
    redis_server.start()  # an empty Redis (no appendonly): what this process kept pending goes to it
    deadline = time.monotonic() + 30
    while True:
        stats = (await status_of(client))["vendors"]["crm"]["stats"]
        if stats is not None or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert stats is not None and stats["1h"]["requests"] == 5 and stats["1h"]["success_rate"] == 1.0


def read_status(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/_gateway/status", timeout=10) as response:
        return dict(json.loads(response.read()))


def get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


async def test_two_processes_on_one_redis_report_the_same(gateway_process, vendor, redis_server) -> None:
    policies = [{"vendor": "crm", "upstream": vendor.url}, {"vendor": "mail", "upstream": vendor.url}]
    first = gateway_process(*policies, config={"storage": redis_server.url})
    second = gateway_process(*policies, config={"storage": redis_server.url})
    vendor.script(*[200] * 4, 500, *[200] * 4, 500)
    for i in range(10):
        status = await asyncio.to_thread(get, f"{(first, second)[i % 2].url}/crm/x")
        assert status == (500 if i in (4, 9) else 200)
    deadline = time.monotonic() + 30
    while True:
        shown = [(await asyncio.to_thread(read_status, gw.url))["vendors"]["crm"]["stats"] for gw in (first, second)]
        if all(s["1h"]["requests"] == 10 for s in shown) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    for stats in shown:
        window = stats["5m"]
        assert window["requests"] == 10
        assert window["success_rate"] == 0.8
        assert window["errors"]["vendor_5xx"] == 2
        assert window["latency_ms"]["p50"] > 0
        assert ISO.match(window["last_success"])
    assert shown[0]["5m"] == shown[1]["5m"] and shown[0]["24h"] == shown[1]["24h"]
    mail = (await asyncio.to_thread(read_status, first.url))["vendors"]["mail"]["stats"]["24h"]
    assert mail["requests"] == 0 and mail["success_rate"] is None


async def test_stats_outlive_a_reload_and_a_removed_vendor_is_no_longer_reported(gateway, vendor, tmp_path) -> None:
    client = await gateway({"vendor": "crm", "upstream": vendor.url}, {"vendor": "mail", "upstream": vendor.url},
                           config={"admin_key": "${ADMIN}", "watch": False}, env={"ADMIN": "admin-key-1"})
    for path in ("/crm/x", "/crm/x", "/mail/x"):
        assert (await client.get(path)).status == 200
    (tmp_path / "policies" / "mail.yaml").unlink()
    assert (await client.post("/_gateway/reload", headers={"X-Gateway-Admin-Key": "admin-key-1"})).status == 200
    assert (await client.get("/crm/x")).status == 200
    vendors = (await status_of(client))["vendors"]
    assert list(vendors) == ["crm"]
    assert vendors["crm"]["stats"]["1h"]["requests"] == 3
