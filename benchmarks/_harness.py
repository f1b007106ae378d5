"""What the benchmark scripts share: starting and stopping the processes they measure,
pinning them to cores, reading their CPU time, wrk's output and py-spy's stacks.

Everything listens on 127.0.0.1 on free ports; every process started is stopped by
``Processes.stop_all``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

HOST = "127.0.0.1"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Processes:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.running: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, cmd: list[str], env: dict[str, str] | None = None,
              cpus: str | None = None) -> subprocess.Popen[bytes]:
        """Runs ``cmd`` in its own process group, logging to ``{name}.log``; ``cpus`` (a
        taskset list such as "0" or "0,1") pins it and every process it forks."""
        if cpus is not None:
            cmd = pinned(cpus, cmd)
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


def leave(workdir: Path, keep: bool) -> None:
    """At the end of a run: its folder removed, or (``--keep-logs``) where it is kept."""
    if keep:
        print(f"logs and configs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)


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


def start_redis(procs: Processes, cpus: str | None = None) -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not on PATH (apt-get install redis-server)")
    port = free_port()
    proc = procs.start("redis", [binary, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no",
                                 "--dir", str(procs.workdir)], cpus=cpus)
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


def start_gateway(procs: Processes, policies: list[str], config: str, workers: int = 1,
                  cpus: str | None = None) -> tuple[str, subprocess.Popen[bytes]]:
    folder = Path(tempfile.mkdtemp(dir=procs.workdir))
    (folder / "policies").mkdir()
    for i, text in enumerate(policies):
        (folder / "policies" / f"p{i}.yaml").write_text(text)
    (folder / "gateway.yaml").write_text(f"policies: {folder / 'policies'}\ndata_dir: {folder / 'data'}\n{config}")
    port = free_port()
    proc = procs.start(f"gateway-{port}", [sys.executable, "-m", "gateway", "serve", "--config", str(folder / "gateway.yaml"),
                                           "--listen", f"{HOST}:{port}", "--workers", str(workers)], cpus=cpus)
    url = f"http://{HOST}:{port}"
    wait_ready(f"{url}/readyz", proc)
    return url, proc


def pinned(cpus: str, cmd: list[str]) -> list[str]:
    """``cmd`` run on the cores ``cpus`` only (taskset execs it: the pid stays the same)."""
    return ["taskset", "-c", cpus, *cmd]


def group_cpu_seconds(pgid: int) -> float | None:
    """User+system CPU seconds of every live process in process group ``pgid`` (Linux /proc)."""
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    total = 0
    try:
        entries = os.listdir("/proc")
    except OSError:
        return None
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        # fields[0] is state (field 3); pgrp is field 5, utime 14, stime 15
        if int(fields[2]) != pgid:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / ticks


_WRK_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def _wrk_ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not m:
        raise ValueError(f"cannot read wrk latency {text!r}")
    return float(m.group(1)) * _WRK_UNITS[m.group(2)]


def parse_wrk(output: str) -> dict[str, object]:
    """req/s, p50/p99 (ms), requests, non-2xx and socket errors from ``wrk --latency`` output."""
    rps = re.search(r"Requests/sec:\s*([\d.]+)", output)
    p50 = re.search(r"^\s*50%\s+(\S+)", output, re.M)
    p99 = re.search(r"^\s*99%\s+(\S+)", output, re.M)
    if not (rps and p50 and p99):
        raise ValueError(f"unexpected wrk output:\n{output}")
    total = re.search(r"(\d+) requests in", output)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", output)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    return {
        "rps": float(rps.group(1)),
        "p50_ms": _wrk_ms(p50.group(1)),
        "p99_ms": _wrk_ms(p99.group(1)),
        "requests": int(total.group(1)) if total else None,
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "errors": sum(int(n) for n in sock.groups()) if sock else 0,
        "socket_errors": sock.group(0) if sock else "",
    }


NGINX_TEMP_DIRS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


def nginx_command(nginx: str, folder: Path, http: str, worker_connections: int = 1024) -> list[str]:
    """Writes ``folder/nginx.conf`` (one worker, in the foreground, no access log, every path
    in ``folder``, so it runs as any user) with ``http`` as the body of its http block, and
    returns the command that runs it."""
    folder.mkdir(parents=True, exist_ok=True)
    conf = folder / "nginx.conf"
    base = [nginx, "-p", f"{folder}/", "-e", str(folder / "error.log"), "-c", str(conf)]
    temp_dirs: tuple[str, ...] = NGINX_TEMP_DIRS
    # Builds without e.g. the uwsgi module reject its *_temp_path directive: drop those.
    for _ in range(len(NGINX_TEMP_DIRS) + 1):
        temps = "\n".join(f"    {name}_temp_path {folder / name};" for name in temp_dirs)
        conf.write_text(
            f"daemon off;\nworker_processes 1;\npid {folder / 'nginx.pid'};\nerror_log {folder / 'error.log'} warn;\n"
            f"events {{\n    worker_connections {worker_connections};\n}}\n"
            f"http {{\n    access_log off;\n{temps}\n{http}\n}}\n"
        )
        check = subprocess.run(base + ["-t", "-q"], capture_output=True, text=True, timeout=30)
        unknown = re.search(r'unknown directive "(\w+)_temp_path"', check.stderr)
        if check.returncode == 0 or not unknown:
            break
        temp_dirs = tuple(d for d in temp_dirs if d != unknown.group(1))
    if check.returncode != 0:
        raise RuntimeError(f"nginx rejected the generated config:\n{check.stderr.strip()}")
    return base


_ACCESS = re.compile(r'aiohttp\.access \[\d+\] \S+ "[^"]*" (\d{3}) ')


def gateway_log_summary(log: Path) -> list[str]:
    """Status counts from the gateway's access log, plus any warning/error lines."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return [f"gateway log unreadable: {log}"]
    statuses: Counter[str] = Counter()
    problems: Counter[str] = Counter()
    for line in lines:
        m = _ACCESS.search(line)
        if m:
            statuses[m.group(1)] += 1
        elif re.search(r"\b(WARNING|ERROR|CRITICAL)\b|Traceback", line):
            # Group by message: drop the timestamp and the process id.
            problems[re.sub(r"^\S+ \S+ | \[\d+\]", "", line)[:300]] += 1
    out = [f"gateway access log: {sum(statuses.values())} requests logged (warm-up and probes included), "
           f"statuses {dict(sorted(statuses.items()))}"]
    if problems:
        out.append(f"gateway log: {sum(problems.values())} warning/error line(s):")
        out.extend(f"  {n:6d} x {message}" for message, n in problems.most_common(5))
    else:
        out.append("gateway log: no warning or error lines")
    return out


def _module(frame: str) -> str:
    """'send (aiohttp/client.py:700)' -> 'aiohttp/client.py'; paths inside the repo keep their package path."""
    where = frame[frame.rfind("(") + 1:frame.rfind(":")] if "(" in frame else frame
    for marker in ("site-packages/", "/lib/python3.", "/gateway/"):
        i = where.find(marker)
        if i >= 0:
            where = where[i + len(marker):] if marker != "/gateway/" else where[i + 1:]
            if marker == "/lib/python3.":
                where = where.split("/", 1)[-1]
            break
    return where


def summarise_profile(path: Path) -> list[str]:
    innermost: Counter[str] = Counter()
    anywhere: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_module(f) for f in stack.split(";")]
        if not frames:
            continue
        total += n
        innermost[frames[-1]] += n
        for package in {f if f.startswith(("gateway/", "aiohttp/")) else f.split("/")[0] for f in frames}:
            anywhere[package] += n
    if not total:
        return ["profile: no samples"]
    out = [f"profile of the gateway's full path ({total} samples of the busy process, {path}):",
           "  innermost Python frame's module (self time; uvloop's own work shows as asyncio/runners.py):"]
    out += [f"    {100 * n / total:5.1f}%  {name}" for name, n in innermost.most_common(15)]
    out.append("  share of samples with the package (gateway and aiohttp: module) on the stack (inclusive; "
               "those on every stack, the event loop and the server's entry, left out):")
    out += [f"    {100 * n / total:5.1f}%  {name}" for name, n in anywhere.most_common() if n < 0.98 * total][:20]
    return out
