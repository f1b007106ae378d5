"""A data_dir that fills up or cannot be used: the embedded mode says so and loses nothing
silently. A failed write still gets the vendor's answer when its dead letter cannot be
stored (counted, and logged with its request id); a data_dir unusable at start stops
``gateway serve`` with one line before it listens. Small tmpfs mounts stand in for full
disks (the tests run as root; they are skipped where mount is not permitted)."""

import asyncio
import contextlib
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from gateway.core.budget import BUCKET, Charge
from gateway.errors import StorageError
from gateway.storage.durable import LocalStore
from gateway.storage.memory import MemoryStorage
from tests.conftest import REPO, free_port, write_setup

pytestmark = pytest.mark.slow


@contextlib.contextmanager
def tmpfs(path: Path, size: str, *options: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", ",".join([f"size={size}", *options]), "tmpfs", str(path)],
        capture_output=True, text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"mounting a tmpfs (a small disk to fill) is not permitted here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        # Lazy: a process the test could not stop must not leave the mount behind.
        subprocess.run(["umount", "-l", str(path)], check=True)


def fill(folder: Path) -> None:
    """Take every free byte of the disk holding ``folder``."""
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)


def policy(vendor, **extra):
    return {"vendor": "v", "upstream": vendor.url, **extra}


async def test_a_dead_letter_lost_to_a_full_disk_is_answered_counted_and_logged(
    gateway_process, vendor, tmp_path
):
    with tmpfs(tmp_path / "state", "1m") as data_dir:
        gw = gateway_process(policy(vendor, dead_letter=True), config={"data_dir": str(data_dir)})
        try:
            fill(data_dir)
            vendor.script(503)
            body = b'{"order": "secret-order-body"}'
            async with aiohttp.ClientSession() as session:
                response = await session.post(gw.url + "/v/orders", data=body, headers={"X-Request-Id": "order-4711"})
                assert response.status == 503  # the vendor's own answer:
                assert await response.json() == {"method": "POST", "path": "/orders", "size": len(body)}
                metrics = await (await session.get(gw.url + "/metrics")).text()
        finally:
            _, log = gw.stop()
    assert 'gateway_dead_letters_lost_total{vendor="v"} 1.0' in metrics
    [line] = [line for line in log.splitlines() if " ERROR " in line]
    assert "order-4711" in line and "POST /orders" in line and "503" in line
    assert "secret-order-body" not in log
    assert "Traceback" not in log and '" 500 ' not in log


async def test_kept_state_waits_for_room_on_the_disk_and_is_then_saved(tmp_path, caplog):
    caplog.set_level(logging.ERROR, "gateway.storage")
    charge = Charge("q:bucket:3600", BUCKET, limit=5, per=3600.0, cost=1)
    with tmpfs(tmp_path / "state", "1m") as data_dir:
        storage = MemoryStorage(data_dir)
        try:
            fill(data_dir)
            assert (await storage.charge_budgets("v", [charge], 0.0)).admitted  # never waits for the disk
            deadline = time.monotonic() + 30
            while "kept state not saved" not in caplog.text:
                assert time.monotonic() < deadline, "the background flush never tried"
                await asyncio.sleep(0.1)
            (data_dir / "filler").unlink()
        finally:
            await storage.close()  # the last flush: there is room again
        again = MemoryStorage(data_dir)
        try:
            assert (await again.peek_budgets("v", [charge])).levels[0].remaining == 4
        finally:
            await again.close()
    assert caplog.text.count("kept state not saved") == 1  # once, not once a second


async def test_every_local_store_call_on_a_full_disk_is_a_storage_error(tmp_path):
    with tmpfs(tmp_path / "state", "1m") as data_dir:
        store = LocalStore(data_dir)
        try:
            fill(data_dir)
            for call in (
                store.put("token:v", b"x" * 8192),
                store.put_entry("0001", "v", b"x" * 8192),
                store.write_state([("budget", "v:q", b"{}" * 4096, 4e9)], 0.0),
            ):
                with pytest.raises(StorageError, match="database or disk is full"):
                    await call
            assert await store.get("token:v") is None  # reading still works
        finally:
            store.close()


def serve(config_file: Path, port: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config_file), "--listen", f"127.0.0.1:{port}"],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )


@contextlib.contextmanager
def unusable(tmp_path: Path, case: str) -> Iterator[str]:
    if case == "a file":
        (tmp_path / "data").write_text("not a folder")
        yield str(tmp_path / "data")
    elif case == "under a file":
        (tmp_path / "data").write_text("not a folder")
        yield str(tmp_path / "data" / "state")
    elif case == "a corrupt database":
        (tmp_path / "data").mkdir()
        (tmp_path / "data" / "gateway.db").write_bytes(b"this is not SQLite" * 100)
        yield str(tmp_path / "data")
    elif case == "a full 64 KB disk":
        with tmpfs(tmp_path / "data", "64k") as data_dir:
            fill(data_dir)
            yield str(data_dir)
    else:
        with tmpfs(tmp_path / "data", "1m", "ro") as data_dir:
            yield str(data_dir)


@pytest.mark.parametrize("case", ["a file", "under a file", "a corrupt database", "a full 64 KB disk", "read-only"])
def test_an_unusable_data_dir_stops_the_start_with_one_line(tmp_path, vendor_url, case):
    with unusable(tmp_path, case) as data_dir:
        config_file, _ = write_setup(tmp_path, [{"vendor": "v", "upstream": vendor_url}], {"data_dir": data_dir})
        assert config_file is not None
        port = free_port()
        done = serve(config_file, port)
        assert done.returncode == 2
        assert done.stdout == "" and done.stderr.count("\n") == 1, done.stderr
        assert done.stderr.startswith(f"gateway: data_dir {data_dir} is unusable: ")
        assert "Traceback" not in done.stderr and "listening" not in done.stderr
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            pass


@pytest.fixture
def vendor_url() -> str:
    return "http://127.0.0.1:9"  # never asked: the gateway must not get that far
