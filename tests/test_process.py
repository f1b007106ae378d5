"""The gateway as operators run it: the command line, signals, workers, streaming."""

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import REPO, free_port, write_setup
from tests.mock_vendor import stream


def run(*args: str, cwd: Path = REPO, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], capture_output=True, text=True, cwd=cwd,
        env={**os.environ, **(env or {})}, timeout=60,
    )


def test_check_accepts_valid_files_and_lists_every_problem(tmp_path):
    _, policies = write_setup(tmp_path, [{"vendor": "a", "upstream": "https://a.example"}])
    ok = run("check", "--policies", str(policies))
    assert ok.returncode == 0 and "a" in ok.stdout
    (policies / "b.yaml").write_text("vendor: b\nupstream: https://b.example\ntimeout: soon\nbudgets: 3\n")
    bad = run("check", "--policies", str(policies))
    assert bad.returncode == 1
    assert bad.stdout.splitlines() == [
        f"{policies}/b.yaml:3: timeout: expected a duration such as 250ms, 10s, 5m, 1h, 1d or seconds, got 'soon'",
        f"{policies}/b.yaml:4: budgets: expected a list, got int 3",
    ]
    assert "Traceback" not in bad.stderr + bad.stdout


def test_check_with_a_config_file_and_a_missing_variable(tmp_path):
    config, _ = write_setup(tmp_path, [{"vendor": "a", "upstream": "https://a.example",
                                       "credentials": {"type": "bearer", "token": "${A_TOKEN}"}}], {})
    result = run("check", "--config", str(config), env={"A_TOKEN": "t"})
    assert result.returncode == 0
    env = {k: v for k, v in os.environ.items() if k != "A_TOKEN"}
    result = subprocess.run([sys.executable, "-m", "gateway", "check", "--config", str(config)],
                            capture_output=True, text=True, env=env, cwd=REPO)
    assert result.returncode == 1
    assert "credentials.token: environment variable A_TOKEN is not set" in result.stdout


def test_serve_refuses_a_public_address_without_callers(tmp_path):
    config, _ = write_setup(tmp_path, [{"vendor": "a", "upstream": "https://a.example"}], {"listen": "0.0.0.0:0"})
    result = run("serve", "--config", str(config))
    assert result.returncode == 2
    assert "refusing to listen on 0.0.0.0:0 without callers" in result.stderr
    assert "allow_anonymous" in result.stderr


def test_serve_with_no_arguments_uses_policies_in_the_current_folder(tmp_path):
    if free_port() and _port_busy(8080):
        pytest.skip("port 8080 is taken on this machine")
    write_setup(tmp_path, [{"vendor": "a", "upstream": "https://a.example"}])
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve"], cwd=tmp_path, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        from tests.conftest import wait_for_port

        try:
            wait_for_port(8080, process=proc)
        except RuntimeError:
            if "cannot listen on 127.0.0.1:8080" in proc.communicate(timeout=30)[1]:
                pytest.skip("port 8080 was taken while the gateway started")
            raise
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0
        assert "listening on 127.0.0.1:8080 with 1 vendor(s), storage memory" in err
    finally:
        proc.kill()


def _port_busy(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


async def test_sigterm_lets_requests_in_flight_finish_then_exits_0(gateway_process, aiohttp_server):
    arrived, release = asyncio.Event(), asyncio.Event()

    async def held(request):
        arrived.set()
        await release.wait()
        return web.Response(text="finished")

    app = web.Application()
    app.router.add_get("/slow", held)
    upstream = await aiohttp_server(app)
    gw = gateway_process({"vendor": "v", "upstream": f"http://127.0.0.1:{upstream.port}"})
    async with aiohttp.ClientSession() as session:
        in_flight = asyncio.create_task(session.get(gw.url + "/v/slow"))
        await asyncio.wait_for(arrived.wait(), 30)
        gw.process.send_signal(signal.SIGTERM)
        assert await _refuses_new_connections(gw.url + "/healthz")
        release.set()
        response = await in_flight
        assert response.status == 200 and await response.text() == "finished"
    code, output = await asyncio.to_thread(gw.stop, True)
    assert code == 0, output
    assert "draining" in output


async def _refuses_new_connections(url: str) -> bool:
    """Whether a new connection to ``url`` is refused within 30 s."""
    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as fresh:
        while time.monotonic() < deadline:
            try:
                async with fresh.get(url) as response:
                    await response.read()
            except aiohttp.ClientConnectionError:
                return True
            await asyncio.sleep(0.05)
    return False


def test_workers_need_shared_storage(tmp_path):
    config, _ = write_setup(tmp_path, [{"vendor": "a", "upstream": "https://a.example"}], {"workers": 2})
    result = run("check", "--config", str(config))
    assert result.returncode == 1 and f"{config}:2: workers: workers > 1 needs shared storage" in result.stdout
    served = run("serve", "--config", str(config))
    assert served.returncode == 1 and "use storage: redis://" in served.stderr


async def test_workers_share_the_port_and_metrics_report_the_sum(gateway_process, vendor, redis_server):
    gw = gateway_process({"vendor": "v", "upstream": vendor.url}, config={"workers": 2, "storage": redis_server.url})
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        statuses = await asyncio.gather(*(_status(session, gw.url + "/v/x") for _ in range(40)))
        assert statuses == [200] * 40
        totals = set()
        for _ in range(6):  # new connections land on either worker; each must report the sum
            text = await (await session.get(gw.url + "/metrics")).text()
            line = next(l for l in text.splitlines() if l.startswith("gateway_requests_total{"))
            totals.add(float(line.rsplit(" ", 1)[1]))
    assert totals == {40.0}
    pids = subprocess.run(["pgrep", "-P", str(gw.process.pid)], capture_output=True, text=True).stdout.split()
    assert len(pids) == 2
    code, output = await asyncio.to_thread(gw.stop)
    assert code == 0, output


async def _status(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(url) as response:
        await response.read()
        return response.status


@pytest.mark.slow
async def test_a_1gb_download_passes_in_flat_memory(gateway_process, aiohttp_server):
    size = 1024**3
    app = web.Application()
    app.router.add_get("/big", stream(size))
    upstream = await aiohttp_server(app)
    gw = gateway_process({"vendor": "v", "upstream": f"http://127.0.0.1:{upstream.port}", "timeout": "60s"})
    received = 0
    async with aiohttp.ClientSession() as session:
        async with session.get(gw.url + "/v/big") as response:
            assert response.headers["Content-Length"] == str(size)
            async for chunk in response.content.iter_chunked(1024 * 1024):
                received += len(chunk)
    assert received == size
    peak_kib = int(next(l for l in Path(f"/proc/{gw.process.pid}/status").read_text().splitlines()
                        if l.startswith("VmHWM")).split()[1])
    assert peak_kib < 200 * 1024, f"gateway peak memory {peak_kib} KiB for a 1 GiB download"
