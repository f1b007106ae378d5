#!/usr/bin/env python3
"""Proxy overhead: one local upstream measured directly, through nginx and through the gateway.

    python benchmarks/proxy_overhead.py [--duration 10] [--concurrency 32] [--warmup 2]
                                        [--workers 1] [--no-nginx] [--python-load]

Everything listens on 127.0.0.1 on free ports; every subprocess is stopped at the end.
The same script also runs the helper processes (``_upstream`` and ``_loadgen`` as the
first argument), so it is self-contained and needs only aiohttp (uvloop if present).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from _harness import gateway_log_summary, group_cpu_seconds, leave, nginx_command, parse_wrk

HOST = "127.0.0.1"
VENDOR = "bench"
ITEM_PATH = "/item/42"
READY_TIMEOUT = 20.0  # seconds to wait for a server to answer
STOP_TIMEOUT = 10.0  # seconds to wait after SIGTERM before SIGKILL
REQUEST_TIMEOUT = 10.0  # per request, Python load generator

# Never route benchmark traffic through an HTTP proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# --------------------------------------------------------------------------- helpers run as subprocesses


def _install_uvloop() -> str:
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


def _item_body(item_id: str) -> bytes:
    """About 1 KB of JSON, the same shape for every id."""
    doc = {
        "id": item_id,
        "name": f"item {item_id}",
        "price": {"amount": 1999, "currency": "EUR"},
        "tags": [f"tag-{n}" for n in range(12)],
        "attributes": {f"attr_{n}": f"value-{n:04d}-" + "x" * 24 for n in range(16)},
        "description": "lorem ipsum dolor sit amet " * 6,
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def run_upstream(port: int) -> None:
    from aiohttp import web

    _install_uvloop()
    cache: dict[str, bytes] = {}

    async def item(request: web.Request) -> web.Response:
        item_id = request.match_info["id"]
        body = cache.get(item_id)
        if body is None:
            body = _item_body(item_id)
            if len(cache) < 10_000:
                cache[item_id] = body
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/item/{id}", item)
    web.run_app(app, host=HOST, port=port, access_log=None, print=None, backlog=1024)


async def _loadgen(url: str, concurrency: int, duration: float, warmup: float) -> dict[str, object]:
    import aiohttp

    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    errors: Counter[str] = Counter()
    recording = False
    perf = time.perf_counter

    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, trust_env=False) as session:

        async def worker(deadline: float) -> None:
            while perf() < deadline:
                started = perf()
                try:
                    async with session.get(url) as response:
                        await response.read()
                        status = response.status
                except Exception as exc:  # counted, never fatal
                    if recording:
                        errors[type(exc).__name__] += 1
                    await asyncio.sleep(0.001)  # a refused connection must not spin
                    continue
                if recording:
                    latencies.append(perf() - started)
                    statuses[status] += 1

        if warmup > 0:
            deadline = perf() + warmup
            await asyncio.gather(*(worker(deadline) for _ in range(concurrency)))
        recording = True
        started = perf()
        deadline = started + duration
        await asyncio.gather(*(worker(deadline) for _ in range(concurrency)))
        elapsed = perf() - started

    latencies.sort()
    completed = len(latencies)

    def pct(p: float) -> float | None:
        if not latencies:
            return None
        index = min(completed - 1, max(0, int(round(p / 100.0 * completed + 0.5)) - 1))
        return latencies[index] * 1000.0

    return {
        "requests": completed,
        "seconds": elapsed,
        "rps": completed / elapsed if elapsed > 0 else 0.0,
        "p50_ms": pct(50),
        "p99_ms": pct(99),
        "non_2xx": sum(n for s, n in statuses.items() if not 200 <= s < 300),
        "statuses": {str(s): n for s, n in sorted(statuses.items())},
        "errors": sum(errors.values()),
        "error_kinds": dict(errors),
    }


def run_loadgen(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="proxy_overhead.py _loadgen")
    parser.add_argument("url")
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--warmup", type=float, default=0.0)
    args = parser.parse_args(argv)
    _install_uvloop()
    result = asyncio.run(_loadgen(args.url, args.concurrency, args.duration, args.warmup))
    print(json.dumps(result))


# --------------------------------------------------------------------------- process management


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class Processes:
    """Every subprocess started here, stopped in reverse order by stop_all()."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[Proc] = []

    def start(self, name: str, cmd: list[str], cwd: Path | None = None) -> Proc:
        log = self.workdir / f"{name}.log"
        with open(log, "wb") as out:
            popen = subprocess.Popen(
                cmd,
                cwd=cwd or self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: workers are stopped with it
            )
        proc = Proc(name, popen, log)
        self.started.append(proc)
        return proc

    def stop(self, proc: Proc) -> None:
        popen = proc.popen
        if popen.poll() is None:
            try:
                popen.send_signal(signal.SIGTERM)
                popen.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                print(f"  ! {proc.name} did not stop within {STOP_TIMEOUT:g}s of SIGTERM; killing it")
            except ProcessLookupError:
                pass
        # Whatever is left in its process group (forked workers) goes too.
        try:
            os.killpg(popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            popen.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass
        if proc in self.started:
            self.started.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.started)):
            self.stop(proc)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def http_get(url: str, timeout: float = 2.0) -> tuple[int, dict[str, str], bytes]:
    try:
        with _OPENER.open(url, timeout=timeout) as response:
            return response.status, dict(response.headers.items()), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers.items()), err.read()


def wait_ready(proc: Proc, url: str) -> None:
    """Poll ``url`` until it answers 200, the process dies, or READY_TIMEOUT passes."""
    deadline = time.monotonic() + READY_TIMEOUT
    last = "no answer"
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited with status {proc.popen.returncode}:\n{proc.log_tail()}")
        try:
            status, _, _ = http_get(url, timeout=1.0)
            if status == 200:
                return
            last = f"status {status}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.05)
    raise RuntimeError(f"{proc.name} not ready at {url} after {READY_TIMEOUT:g}s ({last}):\n{proc.log_tail()}")


# --------------------------------------------------------------------------- the targets


UPSTREAM_HTTP = """\
    upstream bench_upstream {{
        server 127.0.0.1:{upstream_port};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://bench_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}"""


def start_nginx(procs: Processes, nginx: str, upstream_port: int, concurrency: int) -> tuple[Proc, int]:
    port = free_port()
    # a client and an upstream socket each
    cmd = nginx_command(nginx, procs.workdir / "nginx", UPSTREAM_HTTP.format(upstream_port=upstream_port, port=port),
                        worker_connections=max(512, 2 * concurrency + 128))
    return procs.start("nginx", cmd), port


def start_gateway(procs: Processes, upstream_port: int, workers: int) -> tuple[Proc, int]:
    home = procs.workdir / "gateway"
    policies = home / "policies"
    policies.mkdir(parents=True, exist_ok=True)
    (policies / f"{VENDOR}.yaml").write_text(f"vendor: {VENDOR}\nupstream: http://{HOST}:{upstream_port}\n")
    port = free_port()
    cmd = [
        sys.executable, "-m", "gateway", "serve",
        "--policies", str(policies),
        "--listen", f"{HOST}:{port}",
        "--workers", str(workers),
    ]
    # cwd is the temp dir, so a gateway.yaml in the caller's directory is not picked up.
    return procs.start("gateway", cmd, cwd=home), port


# --------------------------------------------------------------------------- load generators


@dataclass
class Result:
    target: str
    rps: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    requests: int | None = None
    non_2xx: int | None = None
    errors: int | None = None
    proxy_cpu: float | None = None  # percent of one core, during the measured run
    upstream_cpu: float | None = None
    note: str = ""
    probe_headers: dict[str, str] = field(default_factory=dict)
    extra: dict[str, object] = field(default_factory=dict)


class LoadGenerator:
    def __init__(self, args: argparse.Namespace, wrk: str | None) -> None:
        self.args = args
        self.wrk = wrk

    def describe(self) -> str:
        if self.wrk:
            version = subprocess.run([self.wrk, "--version"], capture_output=True, text=True, timeout=10)
            first = (version.stdout or version.stderr).splitlines()[:1]
            return f"wrk ({first[0].strip() if first else self.wrk}), -t1 -c{self.args.concurrency}"
        return (f"python (aiohttp client, {_loop_name()}, separate process), "
                f"{self.args.concurrency} keep-alive connections")

    def run(self, url: str, measure_cpu: list[int]) -> tuple[dict[str, object], list[float | None]]:
        """Warm up, then measure; returns the numbers and CPU % of each process group in measure_cpu."""
        if self.args.warmup > 0:
            self._once(url, self.args.warmup)
        before = [group_cpu_seconds(pg) for pg in measure_cpu]
        t0 = time.monotonic()
        numbers = self._once(url, self.args.duration)
        # The Python generator reports its measured time (its own start-up is not load).
        elapsed = _num(numbers.get("seconds")) or (time.monotonic() - t0)
        after = [group_cpu_seconds(pg) for pg in measure_cpu]
        cpu = [
            None if b is None or e is None or elapsed <= 0 else 100.0 * (e - b) / elapsed
            for b, e in zip(before, after)
        ]
        return numbers, cpu

    def _once(self, url: str, seconds: int) -> dict[str, object]:
        return parse_wrk(self._wrk(url, seconds)) if self.wrk else self._python(url, seconds)

    def _wrk(self, url: str, seconds: int) -> str:
        cmd = [self.wrk or "wrk", "-t1", f"-c{self.args.concurrency}", f"-d{seconds}s", "--latency",
               "--timeout", f"{REQUEST_TIMEOUT:g}s", url]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
        if done.returncode != 0:
            raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
        return done.stdout

    def _python(self, url: str, seconds: int) -> dict[str, object]:
        cmd = [sys.executable, os.path.abspath(__file__), "_loadgen", url,
               "--concurrency", str(self.args.concurrency), "--duration", str(seconds)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 2 * REQUEST_TIMEOUT + 30)
        if done.returncode != 0:
            raise RuntimeError(f"python load generator failed: {done.stderr.strip()[-2000:]}")
        return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def _loop_name() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


# --------------------------------------------------------------------------- the benchmark


def measure(target: str, url: str, load: LoadGenerator, proxy: Proc | None, upstream: Proc,
            reference_body: bytes | None) -> Result:
    result = Result(target)
    status, headers, body = http_get(url, timeout=5.0)
    if status != 200:
        result.note = f"probe answered {status}"
    elif reference_body is not None and body != reference_body:
        result.note = "probe body differs from direct"
    groups = ([proxy.popen.pid] if proxy else []) + [upstream.popen.pid]
    numbers, cpu = load.run(url, groups)
    result.rps = _num(numbers.get("rps"))
    result.p50_ms = _num(numbers.get("p50_ms"))
    result.p99_ms = _num(numbers.get("p99_ms"))
    result.requests = _int(numbers.get("requests"))
    result.non_2xx = _int(numbers.get("non_2xx"))
    result.errors = _int(numbers.get("errors"))
    if proxy:
        result.proxy_cpu = cpu[0]
    result.upstream_cpu = cpu[-1]
    result.extra = {k: v for k, v in numbers.items() if k in ("statuses", "error_kinds", "socket_errors") and v}
    result.probe_headers = headers
    if proxy and not proxy.alive():
        result.note = (result.note + "; " if result.note else "") + f"{proxy.name} died during the run"
    return result


def _num(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) else None


def _int(value: object) -> int | None:
    return int(value) if isinstance(value, (int, float)) else None


def fmt(value: float | int | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.2f}x"


def print_table(results: list[Result]) -> None:
    header = ("target", "requests/s", "p50 ms", "p99 ms", "requests", "non-2xx", "errors", "proxy cpu", "upstream cpu")
    rows = [
        (
            r.target,
            fmt(r.rps, ",.0f"),
            fmt(r.p50_ms, ".2f"),
            fmt(r.p99_ms, ".2f"),
            fmt(r.requests, ","),
            fmt(r.non_2xx, "d"),
            fmt(r.errors, "d"),
            "-" if r.proxy_cpu is None else f"{r.proxy_cpu:.0f}%",
            "-" if r.upstream_cpu is None else f"{r.upstream_cpu:.0f}%",
        )
        for r in results
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = "  ".join("{:<%d}" % widths[0] if i == 0 else "{:>%d}" % w for i, w in enumerate(widths))
    print(line.format(*header))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print(line.format(*row))
    for r in results:
        if r.note:
            print(f"  note ({r.target}): {r.note}")
        for key in ("statuses", "error_kinds", "socket_errors"):
            if key in r.extra and (key != "statuses" or r.non_2xx):
                print(f"  {r.target} {key}: {r.extra[key]}")

    by = {r.target: r for r in results}
    gw = by.get("gateway")
    if gw is None:
        return
    print()
    print("ratios                requests/s   p50      p99")
    for other in ("nginx", "direct"):
        o = by.get(other)
        if o is None:
            print(f"gateway/{other:<13} (skipped)")
            continue
        print(f"gateway/{other:<13} {ratio(gw.rps, o.rps):>10}   {ratio(gw.p50_ms, o.p50_ms):>6}   "
              f"{ratio(gw.p99_ms, o.p99_ms):>6}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="measured seconds per row (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up seconds per row, not measured (default 2)")
    parser.add_argument("--concurrency", type=int, default=32, help="open connections (default 32)")
    parser.add_argument("--workers", type=int, default=1, help="gateway worker processes (default 1)")
    parser.add_argument("--no-nginx", action="store_true", help="skip the nginx row even if nginx is installed")
    parser.add_argument("--python-load", action="store_true", help="use the Python load generator even if wrk is installed")
    parser.add_argument("--keep-logs", action="store_true", help="keep the temp dir with configs and server logs")
    args = parser.parse_args(argv)
    for name, low, high in (("duration", 1, 600), ("warmup", 0, 60), ("concurrency", 1, 1024), ("workers", 1, 64)):
        if not low <= getattr(args, name) <= high:
            parser.error(f"--{name} must be between {low} and {high}")

    nginx = None if args.no_nginx else shutil.which("nginx")
    wrk = None if args.python_load else shutil.which("wrk")
    load = LoadGenerator(args, wrk)

    print(f"proxy overhead: {args.duration}s per row after {args.warmup}s warm-up, "
          f"{args.concurrency} connections, {os.cpu_count()} CPU(s)")
    print(f"load generator: {load.describe()}")
    print(f"gateway workers: {args.workers}")
    if wrk:
        print("non-2xx: wrk counts answers with status >= 400 (it treats 3xx as success)")
    if nginx is None:
        why = "--no-nginx" if args.no_nginx else "nginx not found on PATH"
        print(f"nginx row: skipped ({why})")
    print()

    workdir = Path(tempfile.mkdtemp(prefix="proxy-overhead-"))
    procs = Processes(workdir)
    results: list[Result] = []
    gateway_notes: list[str] = []
    try:
        upstream_port = free_port()
        upstream = procs.start("upstream", [sys.executable, os.path.abspath(__file__), "_upstream", str(upstream_port)])
        direct_url = f"http://{HOST}:{upstream_port}{ITEM_PATH}"
        wait_ready(upstream, direct_url)
        _, _, reference = http_get(direct_url)
        print(f"upstream: aiohttp ({_loop_name()}) on {HOST}:{upstream_port}, GET /item/{{id}} -> {len(reference)} byte JSON")

        print("running: direct ...", flush=True)
        results.append(measure("direct", direct_url, load, None, upstream, None))

        if nginx:
            print("running: nginx ...", flush=True)
            proxy, port = start_nginx(procs, nginx, upstream_port, args.concurrency)
            url = f"http://{HOST}:{port}{ITEM_PATH}"
            wait_ready(proxy, url)
            results.append(measure("nginx", url, load, proxy, upstream, reference))
            procs.stop(proxy)

        print("running: gateway ...", flush=True)
        proxy, port = start_gateway(procs, upstream_port, args.workers)
        wait_ready(proxy, f"http://{HOST}:{port}/readyz")
        url = f"http://{HOST}:{port}/{VENDOR}{ITEM_PATH}"
        result = measure("gateway", url, load, proxy, upstream, reference)
        results.append(result)
        added = sorted(k for k in result.probe_headers if k.lower().startswith("x-"))
        procs.stop(proxy)
        if proxy.popen.returncode not in (0, None):
            gateway_notes.append(f"gateway exit status after SIGTERM: {proxy.popen.returncode}")
        gateway_notes.append(f"gateway adds headers: {', '.join(added) or 'none'}")
        gateway_notes.extend(gateway_log_summary(proxy.log))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        if results:
            print()
            print_table(results)
        return 1
    finally:
        procs.stop_all()
        leave(workdir, args.keep_logs)

    print()
    print_table(results)
    if gateway_notes:
        print()
        for note in gateway_notes:
            print(note)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_upstream":
        run_upstream(int(sys.argv[2]))
    elif len(sys.argv) > 1 and sys.argv[1] == "_loadgen":
        run_loadgen(sys.argv[2:])
    else:
        sys.exit(main())
