#!/usr/bin/env python3
"""Cache benchmark: a lookup workload with realistic overlap, through the gateway without
and with a cache rule.

    python benchmarks/cache.py [--lookups 10000] [--companies 3000] [--concurrency 50]
                               [--latency 0.08] [--storage memory|redis]

The workload: ``--lookups`` GETs of ``/companies/{id}`` over ``--companies`` distinct ids,
drawn with a Zipf-like skew (a few companies are looked up often, most rarely: lists
overlap), ``--concurrency`` at a time. The mock vendor answers each after ``--latency``
seconds with about 1 KB of JSON and counts the calls. The same sequence runs twice:
through a gateway whose policy has no cache, then through one with
``cache: [{match: {path: "/companies/*"}, ttl: 1h}]``. Printed: upstream calls for each
and the share saved, and the p50 and p99 of answers (all answers without the cache; hits,
and misses, with it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from _harness import HOST, Processes, call, free_port, start_gateway, start_redis, wait_ready


def run_vendor(port: int, latency: float) -> None:
    from aiohttp import web

    calls = 0

    async def company(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        await asyncio.sleep(latency)
        cid = request.match_info["id"]
        doc = {"id": cid, "name": f"Company {cid}", "domain": f"c{cid}.example", "employees": 42,
               "tags": [f"tag-{n}" for n in range(20)], "description": "lorem ipsum dolor sit amet " * 20}
        return web.Response(body=json.dumps(doc).encode(), content_type="application/json")

    async def report(request: web.Request) -> web.Response:
        return web.json_response({"calls": calls})

    async def clear(request: web.Request) -> web.Response:
        nonlocal calls
        calls = 0
        return web.json_response({})

    app = web.Application()
    app.router.add_get("/companies/{id}", company)
    app.router.add_get("/_report", report)
    app.router.add_post("/_clear", clear)
    web.run_app(app, host=HOST, port=port, print=None, access_log=None)


def workload(lookups: int, companies: int, seed: int = 7) -> list[int]:
    rng = random.Random(seed)
    weights = [1 / (rank + 1) ** 0.9 for rank in range(companies)]
    ids = list(range(companies))
    rng.shuffle(ids)
    return rng.choices(ids, weights=weights, k=lookups)


async def run(base: str, ids: list[int], concurrency: int) -> list[tuple[str, float, int]]:
    """(X-Gateway-Cache or "-", seconds, status) per lookup."""
    import aiohttp

    results: list[tuple[str, float, int]] = []
    queue = list(reversed(ids))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        async def worker() -> None:
            while queue:
                cid = queue.pop()
                started = time.perf_counter()
                async with session.get(f"{base}/companies/{cid}") as response:
                    await response.read()
                    results.append((response.headers.get("X-Gateway-Cache", "-"), time.perf_counter() - started,
                                    response.status))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_vendor":
        run_vendor(int(argv[1]), float(argv[2]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lookups", type=int, default=10_000)
    parser.add_argument("--companies", type=int, default=3_000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--latency", type=float, default=0.08)
    parser.add_argument("--storage", choices=("memory", "redis"), default="memory")
    args = parser.parse_args(argv)
    ids = workload(args.lookups, args.companies)
    print(f"cache: {args.lookups} lookups over {len(set(ids))} distinct companies (of {args.companies}),"
          f" {args.concurrency} at a time; vendor answers in {args.latency * 1000:.0f} ms; storage {args.storage}")
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp:
        procs = Processes(Path(tmp))
        try:
            port = free_port()
            vendor_proc = procs.start("vendor", [sys.executable, __file__, "_vendor", str(port), str(args.latency)])
            vendor = f"http://{HOST}:{port}"
            wait_ready(f"{vendor}/_report", vendor_proc)
            config = f"storage: {start_redis(procs)}\n" if args.storage == "redis" else ""
            plain = f"vendor: lookups\nupstream: {vendor}\n"
            cached = plain + 'cache:\n  - {match: {path: "/companies/*"}, ttl: 1h}\n'
            rows = []
            for name, policy in (("without cache", plain), ("with cache", cached)):
                url, gateway = start_gateway(procs, [policy], config)
                call(f"{vendor}/_clear", "POST")
                started = time.perf_counter()
                results = asyncio.run(run(f"{url}/lookups", ids, args.concurrency))
                elapsed = time.perf_counter() - started
                calls = int(call(f"{vendor}/_report")["calls"])  # type: ignore[call-overload]
                rows.append((name, calls, elapsed, results))
                procs.stop(gateway)
        finally:
            procs.stop_all()
    baseline_calls = rows[0][1]
    print(f"{'run':<15} {'upstream calls':>15} {'saved':>7} {'seconds':>8} {'p50 ms':>8} {'p99 ms':>8}  answers")
    for name, calls, elapsed, results in rows:
        kinds = Counter(kind for kind, _, _ in results)
        statuses = Counter(status for _, _, status in results)
        times = [t for _, t, _ in results]
        saved = 1 - calls / baseline_calls if baseline_calls else 0.0
        print(f"{name:<15} {calls:>15} {saved:>6.1%} {elapsed:>8.2f} {pct(times, 0.5):>8.1f} {pct(times, 0.99):>8.1f}"
              f"  {dict(statuses)} {dict(kinds) if name == 'with cache' else ''}")
    results = rows[1][3]
    for kind in ("HIT", "MISS"):
        times = [t for k, t, _ in results if k == kind]
        print(f"  with cache, {kind.lower():<4}: {len(times):>6} answers, p50 {pct(times, 0.5):.2f} ms,"
              f" p99 {pct(times, 0.99):.2f} ms")
    print("saved: share of upstream calls the cache made unnecessary (distinct ids are the floor)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
