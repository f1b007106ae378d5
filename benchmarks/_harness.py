"""What the benchmark scripts share: starting and stopping the processes they measure.

Everything listens on 127.0.0.1 on free ports; every process started is stopped by
``Processes.stop_all``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HOST = "127.0.0.1"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Processes:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.running: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with open(self.workdir / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                                    start_new_session=True)
        self.running.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.running.remove(proc)

    def stop_all(self) -> None:
        for proc in list(self.running):
            self.stop(proc)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            with _OPENER.open(url, timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer in {timeout:.0f}s")


def call(url: str, method: str = "GET") -> dict[str, object]:
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    with _OPENER.open(request, timeout=10) as response:
        return dict(json.loads(response.read()))


def start_redis(procs: Processes) -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not on PATH (apt-get install redis-server)")
    port = free_port()
    proc = procs.start("redis", [binary, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no",
                                 "--dir", str(procs.workdir)])
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection((HOST, port), timeout=0.2).close()
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("redis-server did not start") from None
            time.sleep(0.05)
    return f"redis://{HOST}:{port}/0"


def start_gateway(procs: Processes, policies: list[str], config: str, workers: int = 1) -> tuple[str, subprocess.Popen[bytes]]:
    folder = Path(tempfile.mkdtemp(dir=procs.workdir))
    (folder / "policies").mkdir()
    for i, text in enumerate(policies):
        (folder / "policies" / f"p{i}.yaml").write_text(text)
    (folder / "gateway.yaml").write_text(f"policies: {folder / 'policies'}\ndata_dir: {folder / 'data'}\n{config}")
    port = free_port()
    proc = procs.start(f"gateway-{port}", [sys.executable, "-m", "gateway", "serve", "--config", str(folder / "gateway.yaml"),
                                           "--listen", f"{HOST}:{port}", "--workers", str(workers)])
    url = f"http://{HOST}:{port}"
    wait_ready(f"{url}/readyz", proc)
    return url, proc
