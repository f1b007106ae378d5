"""The command line around a running gateway: --version, and dead-letters finding the
gateway from the config file it was started with."""

import asyncio
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import aiohttp
import pytest
import yaml

import gateway
from gateway.admin_cli import gateway_url
from tests.conftest import free_port, wait_for_port, write_setup

ADMIN_KEY = "admin-key-1"


def command(*args: str, cwd: Path, key: str | None = ADMIN_KEY) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "GATEWAY_ADMIN_KEY"}
    if key:
        env["GATEWAY_ADMIN_KEY"] = key
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=120)


def test_version_prints_the_installed_version():
    try:
        expected = metadata.version("gateway")
    except metadata.PackageNotFoundError:
        expected = gateway.__version__
    done = command("--version", cwd=Path.cwd(), key=None)
    assert done.returncode == 0 and done.stdout == f"gateway {expected}\n"


@pytest.fixture
async def served(tmp_path, vendor):
    """``gateway serve --config gateway.yaml`` on the free port its config's listen names,
    holding one dead letter (a PATCH the vendor failed)."""
    port = free_port()
    policy = {"vendor": "v", "upstream": vendor.url, "dead_letter": True}
    config_file, _ = write_setup(tmp_path, [policy], {"listen": f"127.0.0.1:{port}", "admin_key": "${ADMIN}"})
    with open(tmp_path / "gateway.log", "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", str(config_file)],
                                   env={**os.environ, "ADMIN": ADMIN_KEY}, stdout=log, stderr=subprocess.STDOUT,
                                   cwd=tmp_path)
    try:
        await asyncio.to_thread(wait_for_port, port, "127.0.0.1", 60.0, process)
        vendor.script(500)
        async with aiohttp.ClientSession() as session:
            async with session.patch(f"http://127.0.0.1:{port}/v/items/3", data=b"{}") as response:
                assert response.status == 500
        yield config_file, port
    finally:
        process.terminate()
        process.wait(30)


def another_config(folder: Path, listen: str) -> Path:
    folder.mkdir()
    config_file = folder / "gateway.yaml"
    config_file.write_text(yaml.safe_dump({"listen": listen, "policies": "./nowhere"}))
    return config_file


async def test_dead_letters_finds_the_gateway_from_the_configs_listen(served, tmp_path):
    config_file, port = served
    listed = await asyncio.to_thread(command, "dead-letters", "--config", str(config_file), "list", cwd=Path("/"))
    assert listed.returncode == 0 and "PATCH  /items/3  500" in listed.stdout, listed.stderr
    entry_id = listed.stdout.split()[0]
    by_default = await asyncio.to_thread(command, "dead-letters", "show", entry_id, cwd=config_file.parent)
    assert by_default.returncode == 0 and '"path": "/items/3"' in by_default.stdout  # ./gateway.yaml
    unspecified = another_config(tmp_path / "every-interface", f"0.0.0.0:{port}")
    via_any = await asyncio.to_thread(command, "dead-letters", "--config", str(unspecified), "list", cwd=Path("/"))
    assert via_any.returncode == 0 and entry_id in via_any.stdout  # 0.0.0.0 is reached at 127.0.0.1


async def test_dead_letters_url_wins_over_the_config(served, tmp_path):
    config_file, port = served
    elsewhere = another_config(tmp_path / "elsewhere", f"127.0.0.1:{free_port()}")
    missed = await asyncio.to_thread(command, "dead-letters", "--config", str(elsewhere), "list", cwd=Path("/"))
    assert missed.returncode == 1 and "cannot reach http://127.0.0.1:" in missed.stderr
    url = f"http://127.0.0.1:{port}"
    found = await asyncio.to_thread(command, "dead-letters", "--config", str(elsewhere), "--url", url, "list",
                                    cwd=Path("/"))
    assert found.returncode == 0 and "/items/3" in found.stdout


def test_dead_letters_reports_a_config_it_cannot_use(tmp_path):
    bad = tmp_path / "gateway.yaml"
    bad.write_text("workers: 1\nlisten: port 8080\n")
    done = command("dead-letters", "--config", str(bad), "list", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr == (f"gateway: {bad}:2: listen: expected HOST:PORT (IPv6 as [::1]:8080), "
                           "got 'port 8080'\n")
    missing = command("dead-letters", "--config", str(tmp_path / "absent.yaml"), "list", cwd=tmp_path)
    assert missing.returncode == 2 and "absent.yaml:1: (file): cannot read: No such file or directory" in missing.stderr


def test_the_gateway_address_comes_from_listen(tmp_path):
    def url_for(text: str) -> str:
        config_file = tmp_path / "gateway.yaml"
        config_file.write_text(text)
        return gateway_url(str(config_file))

    assert gateway_url(None) == "http://127.0.0.1:8080"
    assert url_for("workers: 1\n") == "http://127.0.0.1:8080"
    assert url_for("") == "http://127.0.0.1:8080"
    assert url_for("listen: 10.1.2.3:9000\n") == "http://10.1.2.3:9000"
    assert url_for("listen: gateway.internal:9000\n") == "http://gateway.internal:9000"
    assert url_for("listen: 0.0.0.0:9000\n") == "http://127.0.0.1:9000"
    assert url_for("listen: '[::]:9000'\n") == "http://[::1]:9000"
    assert url_for("listen: '[fd00::5]:9000'\n") == "http://[fd00::5]:9000"
