"""Reloading real `gateway serve` processes: SIGHUP, watching the files, `gateway reload`,
and workers reloading together under their supervisor."""

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import REPO

DEADLINE = 60.0


async def poll(condition, what, deadline=DEADLINE):
    started = time.monotonic()
    while not await condition():
        if time.monotonic() - started > deadline:
            raise AssertionError(f"not within {deadline:.0f}s: {what}")
        await asyncio.sleep(0.2)


def policies_of(gw) -> Path:
    return Path(yaml.safe_load(gw.config_file.read_text())["policies"])


def write(folder: Path, policy: dict) -> None:
    """As an editor saves: a temporary file renamed over the policy."""
    temporary = folder / f".{policy['vendor']}.yaml.swp"
    temporary.write_text(yaml.safe_dump(policy))
    os.replace(temporary, folder / f"{policy['vendor']}.yaml")


def limited(name: str, upstream: str, limit: int) -> dict:
    return {"vendor": name, "upstream": upstream,
            "budgets": [{"name": "hourly", "limit": limit, "per": "1h", "window": "rolling"}]}


async def get(session, url):
    async with session.get(url) as response:
        await response.read()
        return response.status


async def json_of(session, url):
    async with session.get(url) as response:
        return await response.json()


async def metric(session, url, name, **labels):
    async with session.get(url + "/metrics") as response:
        text = await response.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


def children(pid: int) -> list[str]:
    return subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()


async def test_sighup_during_steady_traffic_applies_a_new_limit_and_vendor_without_a_failed_request(
    gateway_process, vendor
):
    gw = gateway_process(limited("v", vendor.url, 1000), config={"watch": False})
    folder = policies_of(gw)
    statuses: list[int] = []
    stop = asyncio.Event()

    async def traffic(session):
        while not stop.is_set():
            statuses.append(await get(session, gw.url + "/v/x"))

    async with aiohttp.ClientSession() as session:
        runners = [asyncio.create_task(traffic(session)) for _ in range(4)]
        await poll(lambda: _true(len(statuses) > 20), "traffic flows")
        write(folder, limited("v", vendor.url, 2000))
        write(folder, {"vendor": "w", "upstream": vendor.url})
        gw.process.send_signal(signal.SIGHUP)
        await poll(lambda: _served(session, gw.url + "/w/x"), "the new vendor is served")
        sent = len(statuses)
        await poll(lambda: _true(len(statuses) > sent + 20), "traffic flows after the reload")
        stop.set()
        await asyncio.gather(*runners)
        status = await json_of(session, gw.url + "/_gateway/status")
    assert set(statuses) == {200}, statuses
    assert gw.process.poll() is None
    assert status["vendors"]["v"]["budgets"][0]["limit"] == 2000
    code, output = await asyncio.to_thread(gw.stop)
    assert code == 0, output
    assert "config reloaded: 2 vendor(s); added: w; changed: v" in output


async def test_a_typo_keeps_the_old_snapshot_and_a_new_file_is_picked_up_by_watching(gateway_process, vendor):
    gw = gateway_process({"vendor": "v", "upstream": vendor.url}, config={})
    folder = policies_of(gw)
    async with aiohttp.ClientSession() as session:
        assert await metric(session, gw.url, "gateway_config_reloads_total", result="error") == 0
        started = await metric(session, gw.url, "gateway_config_last_reload_success_timestamp_seconds")
        assert started and started > time.time() - 600

        (folder / "v.yaml").write_text(f"vendor: v\nupstream: {vendor.url}\ntimout: 5s\n")
        await poll(lambda: _metric_is(session, gw.url, 1, result="error"), "the typo is noticed by watching")
        assert await get(session, gw.url + "/v/x") == 200
        status = await json_of(session, gw.url + "/_gateway/status")
        assert any("v.yaml:3: timout:" in problem for problem in status["config"]["last_error"])
        assert "v.yaml:3: timout:" in gw.log.read_text()

        write(folder, {"vendor": "v", "upstream": vendor.url})
        write(folder, {"vendor": "w", "upstream": vendor.url})
        await poll(lambda: _served(session, gw.url + "/w/x"), "the new file is served")
        assert await metric(session, gw.url, "gateway_config_reloads_total", result="ok") == 1
        assert await metric(session, gw.url, "gateway_config_last_reload_success_timestamp_seconds") > started
        status = await json_of(session, gw.url + "/_gateway/status")
        assert status["config"]["last_error"] is None
    code, output = await asyncio.to_thread(gw.stop)
    assert code == 0, output


async def test_gateway_reload_exits_1_with_the_problems_then_0(gateway_process, vendor):
    env = {"GATEWAY_ADMIN_KEY": "admin-key-123"}
    gw = gateway_process({"vendor": "v", "upstream": vendor.url},
                         config={"admin_key": "${GATEWAY_ADMIN_KEY}", "watch": False}, env=env)
    folder = policies_of(gw)
    (folder / "w.yaml").write_text("vendor: w\nupstrem: http://127.0.0.1:9\n")

    def reload():
        return subprocess.run([sys.executable, "-m", "gateway", "reload", "--url", gw.url],
                              capture_output=True, text=True, cwd=REPO, env={**os.environ, **env}, timeout=120)

    refused = await asyncio.to_thread(reload)
    assert refused.returncode == 1 and "w.yaml:2: upstrem:" in refused.stdout, refused
    write(folder, {"vendor": "w", "upstream": vendor.url})
    done = await asyncio.to_thread(reload)
    assert done.returncode == 0 and "v, w" in done.stdout, done
    async with aiohttp.ClientSession() as session:
        assert await get(session, gw.url + "/w/x") == 200
    code, output = await asyncio.to_thread(gw.stop)
    assert code == 0, output


async def test_workers_reload_together_on_sighup_to_their_supervisor(gateway_process, vendor, redis_server):
    gw = gateway_process(limited("v", vendor.url, 1000),
                         config={"workers": 2, "storage": redis_server.url, "watch": False,
                                 "admin_key": "${GATEWAY_ADMIN_KEY}"},
                         env={"GATEWAY_ADMIN_KEY": "admin-key-123"})
    supervisor = gw.process.pid
    await poll(lambda: _true(len(children(supervisor)) == 2), "both workers started")
    workers = children(supervisor)
    write(policies_of(gw), limited("v", vendor.url, 2000))
    gw.process.send_signal(signal.SIGHUP)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        async def every_connection_sees(limit):
            for _ in range(12):  # new connections land on either worker
                status = await json_of(session, gw.url + "/_gateway/status")
                if status["vendors"]["v"]["budgets"][0]["limit"] != limit:
                    return False
            return True

        await poll(lambda: every_connection_sees(2000), "both workers apply the new limit")
        statuses = await asyncio.gather(*(get(session, gw.url + "/v/x") for _ in range(20)))
        assert statuses == [200] * 20
        assert await metric(session, gw.url, "gateway_config_reloads_total", result="ok") == 1

        # The API, asked of one worker, reloads them all (or none).
        admin = {"X-Gateway-Admin-Key": "admin-key-123"}
        (policies_of(gw) / "v.yaml").write_text(f"vendor: v\nupstream: {vendor.url}\nbudget: []\n")
        async with session.post(gw.url + "/_gateway/reload", headers=admin) as refused:
            assert refused.status == 422
            assert any("v.yaml:3: budget:" in p for p in (await refused.json())["problems"])
        assert await every_connection_sees(2000)
        async def every_connection_shows_why():
            for _ in range(12):
                status = await json_of(session, gw.url + "/_gateway/status")
                if not any("v.yaml:3: budget:" in p for p in status["config"]["last_error"] or ()):
                    return False
            return True

        await poll(every_connection_shows_why, "every worker shows the problems")
        write(policies_of(gw), limited("v", vendor.url, 3000))
        async with session.post(gw.url + "/_gateway/reload", headers=admin) as answer:
            assert answer.status == 200 and await answer.json() == {"vendors": ["v"]}
        assert await every_connection_sees(3000)
        assert await metric(session, gw.url, "gateway_config_reloads_total", result="ok") == 2
        assert await metric(session, gw.url, "gateway_config_reloads_total", result="error") == 1
    assert gw.process.poll() is None and gw.process.pid == supervisor
    assert sorted(children(supervisor)) == sorted(workers)  # applied, not restarted
    code, output = await asyncio.to_thread(gw.stop)
    assert code == 0, output
    assert children(supervisor) == []
    assert not any(Path("/tmp").glob(f"gateway-metrics-*/*_{supervisor}.db"))


async def _true(value: bool) -> bool:
    return value


async def _served(session, url) -> bool:
    return await get(session, url) == 200


async def _metric_is(session, url, value, **labels) -> bool:
    return await metric(session, url, "gateway_config_reloads_total", **labels) == value
