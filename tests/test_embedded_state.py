"""The embedded mode (``storage: memory``) keeps what it counted across a restart of
``gateway serve``: spent budgets stay spent, a vendor's pause still holds, an open breaker
stays open; after ``kill -9`` only the last second's changes may be missing."""

import asyncio
import os
import signal
import sqlite3
import time

import aiohttp
import orjson
import pytest

from gateway.core.budget import BUCKET, Charge
from gateway.storage.memory import MemoryStorage
from tests.mock_vendor import answer

pytestmark = pytest.mark.slow

QUOTAS = {
    "rolling": {"name": "q", "limit": 5, "per": "1h", "window": "rolling"},
    "fixed": {"name": "q", "limit": 5, "per": "1d", "window": "fixed"},
    "bucket": {"name": "q", "limit": 5, "per": "1h"},
}


def policy(vendor, **extra):
    return {"vendor": "v", "upstream": vendor.url, **extra}


def config(tmp_path):
    return {"data_dir": str(tmp_path / "state")}


async def statuses(url, count):
    async with aiohttp.ClientSession() as session:
        return [(await session.get(url + "/v/items")).status for _ in range(count)]


async def refused(url):
    async with aiohttp.ClientSession() as session:
        response = await session.get(url + "/v/items")
        return response.status, (await response.json())["type"]


def restart(gw, *, kill=False):
    """Stop the gateway (SIGTERM, or SIGKILL) and start it again on the same port and data."""
    if kill:
        os.kill(gw.process.pid, signal.SIGKILL)
        gw.process.wait()
    else:
        code, _ = gw.stop()
        assert code == 0
    gw.start()


def kept_rows(tmp_path, section):
    path = tmp_path / "state" / "gateway.db"
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [orjson.loads(value) for (value,) in db.execute("SELECT value FROM state WHERE section = ?", (section,))]
    finally:
        db.close()


async def until_kept(tmp_path, section, condition, timeout=30.0):
    """Poll the data_dir until the background flush has written what ``condition`` wants."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(condition(row) for row in kept_rows(tmp_path, section)):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"the {section} state was not written within {timeout}s")


@pytest.mark.parametrize("kind", list(QUOTAS))
async def test_a_spent_budget_stays_spent_across_a_clean_restart(gateway_process, vendor, tmp_path, kind):
    gw = gateway_process(policy(vendor, budgets=[QUOTAS[kind]]), config=config(tmp_path))
    assert await statuses(gw.url, 5) == [200] * 5
    restart(gw)
    assert await refused(gw.url) == (429, "budget-exhausted")
    assert len(vendor.received) == 5
    _, log = gw.stop()
    assert "Traceback" not in log


async def test_a_spent_quota_stays_spent_after_kill_9_once_a_second_has_passed(gateway_process, vendor, tmp_path):
    gw = gateway_process(policy(vendor, budgets=[QUOTAS["rolling"]]), config=config(tmp_path))
    assert await statuses(gw.url, 5) == [200] * 5
    await until_kept(tmp_path, "budget", lambda row: sum(units for _, units in row["counts"]) == 5)
    restart(gw, kill=True)
    assert await refused(gw.url) == (429, "budget-exhausted")
    assert len(vendor.received) == 5


async def test_a_vendors_pause_still_holds_after_a_restart(gateway_process, vendor, tmp_path):
    budget = {"name": "burst", "limit": 100, "per": "1s"}
    gw = gateway_process(policy(vendor, budgets=[budget]), config=config(tmp_path))
    vendor.script(answer(429, b"slow down", {"Retry-After": "600"}))
    assert await statuses(gw.url, 1) == [429]
    restart(gw)
    async with aiohttp.ClientSession() as session:
        response = await session.get(gw.url + "/v/items")
        assert response.status == 429 and (await response.json())["type"] == "budget-exhausted"
        assert 590 <= int(response.headers["Retry-After"]) <= 600
    assert len(vendor.received) == 1  # the vendor was not asked again


async def test_an_open_breaker_stays_open_across_restarts(gateway_process, vendor, tmp_path):
    breaker = {"failure_ratio": 0.5, "window": "1m", "min_calls": 2, "open_for": "10m"}
    gw = gateway_process(policy(vendor, circuit_breaker=breaker), config=config(tmp_path))
    vendor.script(500, 500)
    assert await statuses(gw.url, 2) == [500, 500]
    assert await refused(gw.url) == (503, "circuit-open")
    restart(gw)
    assert await refused(gw.url) == (503, "circuit-open")
    await until_kept(tmp_path, "breaker", lambda row: row["opened_until"] > 0)
    restart(gw, kill=True)
    async with aiohttp.ClientSession() as session:
        response = await session.get(gw.url + "/v/items")
        assert response.status == 503 and (await response.json())["type"] == "circuit-open"
        assert int(response.headers["Retry-After"]) > 500
        status = await (await session.get(gw.url + "/_gateway/status")).json()
    assert status["vendors"]["v"]["circuit_breaker"] == "open"
    assert len(vendor.received) == 2


async def test_kept_state_that_cannot_be_read_is_skipped_and_the_rest_kept(gateway_process, vendor, tmp_path):
    gw = gateway_process(policy(vendor, budgets=[QUOTAS["rolling"]]), config=config(tmp_path))
    assert await statuses(gw.url, 5) == [200] * 5
    gw.stop()
    db = sqlite3.connect(tmp_path / "state" / "gateway.db", isolation_level=None)
    db.executemany("INSERT INTO state (section, key, value, until) VALUES (?, ?, ?, ?)", [
        ("budget", "v:other:rolling:3600", b"{not json", 4e9),
        ("budget", "v:wrong:rolling:3600", b'{"tat": "soon", "paused": 0, "counts": []}', 4e9),
        ("budget", "v:blob", b'{"tat": 0, "paused": 0, "counts": []}', "never"),
        ("auth-stop", "v", b"{}", 4e9),  # a kind of state from a later version
        ("breaker", "v", b"[]", 4e9),
    ])
    db.close()
    gw.start()
    assert await refused(gw.url) == (429, "budget-exhausted")  # the good entry was read back
    _, log = gw.stop()
    assert "Traceback" not in log
    assert log.count("WARNING gateway.storage") == log.count("ignored: ") == 5


async def test_a_charge_writes_nothing_until_the_flush(tmp_path):
    charge = Charge("q:bucket:3600", BUCKET, limit=5, per=3600.0, cost=1)
    storage = MemoryStorage(tmp_path)
    assert (await storage.charge_budgets("v", [charge], 0.0)).admitted
    assert kept_rows_at(tmp_path) == []  # on the request path: memory only
    await storage.close()  # the last flush
    assert len(kept_rows_at(tmp_path)) == 1
    again = MemoryStorage(tmp_path)
    assert (await again.peek_budgets("v", [charge])).levels[0].remaining == 4
    await again.refund_budgets("v", [charge], time.time())  # given back: nothing left to keep
    await again.close()
    assert kept_rows_at(tmp_path) == []


def kept_rows_at(folder):
    db = sqlite3.connect(folder / "gateway.db")
    try:
        return db.execute("SELECT section, key FROM state").fetchall()
    finally:
        db.close()
