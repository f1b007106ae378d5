#!/usr/bin/env python3
"""Budget benchmarks: how exactly the gateway keeps a vendor's limit, and how fast a bulk
job finishes under it compared with a client that retries 429s itself.

    python benchmarks/budgets.py precision [--duration 30] [--processes 1 2 4] [--rate 20]
    python benchmarks/budgets.py pacing [--calls 300] [--rate 20] [--concurrency 20]

precision: N gateway processes (``--workers N``) share one redis-server and front a
mock vendor that records when each request arrives. A load generator offers far more
than the budgets allow (it prints the multiple) for ``--duration`` seconds to two vendors
at once: one with a token bucket (limit = rate, per 1 s) and one with a rolling quota
(limit = 10 x rate per 10 s). Printed: requests admitted against what the token bucket
promises (capacity + rate x duration), and the most requests that arrived in any 10 s
against the quota's limit.

pacing: the same bulk job of ``--calls`` GETs, ``--concurrency`` at a time, against a
vendor that allows ``--rate`` requests in any 1 s and answers 429 (Retry-After) past
that. Baseline: straight to the vendor with a conventional client that retries 429s with
exponential backoff (0.25 s doubling to 8 s, full jitter). Gateway: through one gateway
whose policy has the vendor's limit as a rolling quota and ``when_exhausted: wait``.
Printed: completion time / (calls / rate) and the vendor's 429 count for each.

Everything listens on 127.0.0.1 on free ports and runs in a temp dir; every subprocess
is stopped at the end. Run it with the Python that has the gateway installed.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import sys
import tempfile
import time
from collections import Counter, deque
from pathlib import Path

from _harness import HOST, Processes, call, free_port, start_gateway, start_redis, wait_ready


# --------------------------------------------------------------------------- the mock vendor (a subprocess)


def run_vendor(port: int, limit: int, per: float) -> None:
    """Answers 200 and records arrival times per first path segment; with ``limit`` > 0,
    past ``limit`` requests in any ``per`` seconds it answers 429 with Retry-After."""
    from aiohttp import web

    arrivals: dict[str, list[float]] = {}
    recent: deque[float] = deque()
    refused = 0

    async def handle(request: web.Request) -> web.Response:
        nonlocal refused
        now = time.time()
        if limit:
            while recent and recent[0] <= now - per:
                recent.popleft()
            if len(recent) >= limit:
                refused += 1
                wait = math.ceil(recent[0] + per - now)
                return web.json_response({"error": "rate limited"}, status=429, headers={"Retry-After": str(wait)})
            recent.append(now)
        arrivals.setdefault(request.path.split("/")[1], []).append(now)
        return web.json_response({"ok": True})

    async def report(request: web.Request) -> web.Response:
        return web.json_response({"arrivals": arrivals, "refused": refused})

    async def clear(request: web.Request) -> web.Response:
        nonlocal refused
        arrivals.clear()
        recent.clear()
        refused = 0
        return web.json_response({})

    app = web.Application()
    app.router.add_get("/_report", report)
    app.router.add_post("/_clear", clear)
    app.router.add_route("*", "/{tail:.*}", handle)
    web.run_app(app, host=HOST, port=port, print=None, access_log=None)


# --------------------------------------------------------------------------- processes


def start_vendor(procs: Processes, limit: int = 0, per: float = 1.0) -> str:
    port = free_port()
    proc = procs.start("vendor", [sys.executable, __file__, "_vendor", str(port), str(limit), str(per)])
    url = f"http://{HOST}:{port}"
    wait_ready(f"{url}/_report", proc)
    return url


# --------------------------------------------------------------------------- precision


async def hammer(urls: list[str], seconds: float, concurrency: int) -> Counter[int]:
    import aiohttp

    statuses: Counter[int] = Counter()
    deadline = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def worker(n: int) -> None:
            url = urls[n % len(urls)]
            while time.monotonic() < deadline:
                try:
                    async with session.get(url) as response:
                        await response.read()
                        statuses[response.status] += 1
                except aiohttp.ClientError:
                    statuses[0] += 1

        await asyncio.gather(*(worker(n) for n in range(concurrency)))
    return statuses


def most_in_any_window(times: list[float], span: float) -> int:
    times = sorted(times)
    most, low = 0, 0
    for high, t in enumerate(times):
        while times[low] <= t - span:
            low += 1
        most = max(most, high - low + 1)
    return most


def precision(args: argparse.Namespace) -> None:
    rate = args.rate
    quota = 10 * rate
    print(f"precision: {args.duration:.0f} s per run, token bucket {rate}/s (capacity {rate}), rolling quota {quota} per 10 s")
    print(f"{'processes':>9} {'offered/s':>10} {'x budget':>9} {'admitted':>9} {'promise':>8} {'bucket %':>9}"
          f" {'quota max':>10} {'limit':>6} {'quota admitted':>13}")
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp:
        procs = Processes(Path(tmp))
        try:
            vendor = start_vendor(procs)
            policies = [  # each upstream has its own base path, so the vendor tells them apart
                f"vendor: bucket\nupstream: {vendor}/bucket\nbudgets:\n  - {{name: burst, limit: {rate}, per: 1s}}\n",
                f"vendor: quota\nupstream: {vendor}/quota\nbudgets:\n"
                f"  - {{name: quota, limit: {quota}, per: 10s, window: rolling}}\n",
            ]
            for n in args.processes:
                redis_url = start_redis(procs)
                url, gateway = start_gateway(procs, policies, f"storage: {redis_url}\n", workers=n)
                call(f"{vendor}/_clear", "POST")
                started = time.time()
                statuses = asyncio.run(hammer([f"{url}/bucket/x", f"{url}/quota/x"], args.duration, args.concurrency))
                ended = time.time()
                report = call(f"{vendor}/_report")
                arrivals: dict[str, list[float]] = report["arrivals"]  # type: ignore[assignment]
                bucket = arrivals.get("bucket", [])
                quota_times = arrivals.get("quota", [])
                offered = sum(statuses.values()) / (ended - started)
                # What a full bucket promises over the span the vendor saw: capacity + rate x span.
                promise = rate + rate * (max(bucket) - min(bucket)) if bucket else 0.0
                most = most_in_any_window(quota_times, 10.0)
                print(f"{n:>9} {offered:>10.0f} {offered / (rate + quota / 10):>8.1f}x {len(bucket):>9} {promise:>8.1f}"
                      f" {100 * len(bucket) / promise:>8.2f}% {most:>10} {quota:>6} {len(quota_times):>13}")
                procs.stop(gateway)
                procs.stop(procs.running[-1])  # this run's redis
        finally:
            procs.stop_all()
    print("bucket %: admitted / (capacity + rate x the span from first to last arrival), target 99-101;"
          " quota max: most arrivals in any 10 s, never above the limit")


# --------------------------------------------------------------------------- pacing


async def bulk_job(base: str, calls: int, concurrency: int, retry_429: bool) -> tuple[float, Counter[int]]:
    import aiohttp

    statuses: Counter[int] = Counter()
    queue = list(range(calls))
    rng = random.Random(1)
    connector = aiohttp.TCPConnector(limit=0)
    started = time.monotonic()
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
        async def worker() -> None:
            while queue:
                item = queue.pop()
                attempt = 0
                while True:
                    async with session.get(f"{base}/company/{item}") as response:
                        await response.read()
                        statuses[response.status] += 1
                    if response.status != 429 or not retry_429:
                        break
                    attempt += 1
                    await asyncio.sleep(rng.uniform(0, min(8.0, 0.25 * 2 ** (attempt - 1))))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.monotonic() - started, statuses


def pacing(args: argparse.Namespace) -> None:
    ideal = args.calls / args.rate
    print(f"pacing: {args.calls} calls, {args.concurrency} at a time, vendor limit {args.rate} in any 1 s;"
          f" calls / rate = {ideal:.1f} s")
    print(f"{'client':<44} {'seconds':>8} {'/ ideal':>8} {'vendor 429s':>12} {'answers':>20}")
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp:
        procs = Processes(Path(tmp))
        try:
            vendor = start_vendor(procs, limit=args.rate, per=1.0)
            elapsed, statuses = asyncio.run(bulk_job(f"{vendor}/direct", args.calls, args.concurrency, retry_429=True))
            refused = call(f"{vendor}/_report")["refused"]
            print(f"{'direct, retrying 429 with exponential backoff':<44} {elapsed:>8.2f} {elapsed / ideal:>8.3f}"
                  f" {refused:>12} {dict(statuses)!s:>20}")
            call(f"{vendor}/_clear", "POST")
            time.sleep(1.1)  # the vendor's window forgets the baseline
            policy = (f"vendor: paced\nupstream: {vendor}/gw\nbudgets:\n"
                      f"  - {{name: limit, limit: {args.rate}, per: 1s, window: rolling}}\nwhen_exhausted: {{wait: 60s}}\n")
            url, _ = start_gateway(procs, [policy], "")
            elapsed, statuses = asyncio.run(bulk_job(f"{url}/paced", args.calls, args.concurrency, retry_429=False))
            refused = call(f"{vendor}/_report")["refused"]
            print(f"{'through the gateway (wait)':<44} {elapsed:>8.2f} {elapsed / ideal:>8.3f}"
                  f" {refused:>12} {dict(statuses)!s:>20}")
        finally:
            procs.stop_all()
    print("/ ideal: completion time / (calls / rate); target for the gateway: <= 1.02 and zero 429s")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_vendor":
        run_vendor(int(argv[1]), int(argv[2]), float(argv[3]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="benchmark", required=True)
    p = sub.add_parser("precision")
    p.add_argument("--duration", type=float, default=30.0)
    p.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--rate", type=int, default=20)
    p.add_argument("--concurrency", type=int, default=64)
    q = sub.add_parser("pacing")
    q.add_argument("--calls", type=int, default=300)
    q.add_argument("--rate", type=int, default=20)
    q.add_argument("--concurrency", type=int, default=20)
    args = parser.parse_args(argv)
    (precision if args.benchmark == "precision" else pacing)(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
