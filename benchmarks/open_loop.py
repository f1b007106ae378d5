#!/usr/bin/env python3
"""Latency at a fixed rate (open loop): what wrk2 does, for a machine without it.

    python benchmarks/open_loop.py RATE SLICES SLICE_SECONDS URL...

prints, as one JSON list, p50/p99 and failures for each URL. Each request is sent when it is
due whatever the answers do, on as many keep-alive connections as it takes (raw HTTP/1.1,
uvloop if installed), and its latency counts from when it was due, so a stall is charged to
every request it delays (no coordinated omission). The URLs are taken in turn, one slice
each, ``SLICES`` times after one uncounted warm-up slice each. ``paced_latency`` runs it
from another script.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from _harness import HOST, pinned


class PacedClient:
    """GETs of one URL on keep-alive connections, opened as they are needed, and what came back."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or HOST, parts.port or 80
        self.request = f"GET {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n".encode()
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.latencies: list[float] = []
        self.errors: Counter[str] = Counter()
        self.statuses: Counter[int] = Counter()

    @staticmethod
    async def _answer(reader: asyncio.StreamReader) -> tuple[int, bool]:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
        status = int(head[9:12])
        length = next((int(line[15:]) for line in head.split("\r\n") if line.startswith("content-length:")), None)
        if length is not None:
            await reader.readexactly(length)
        elif "transfer-encoding: chunked" in head:
            while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
                await reader.readexactly(size + 2)
            while await reader.readuntil(b"\r\n") != b"\r\n":
                pass
        return status, "connection: close" not in head

    async def fetch(self, due: float, counted: bool) -> None:
        conn = None
        try:
            async with asyncio.timeout(10):
                conn = self.idle.pop() if self.idle else await asyncio.open_connection(self.host, self.port)
                conn[1].write(self.request)
                status, reusable = await self._answer(conn[0])
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError) as exc:
            if conn:
                conn[1].close()
            if counted:
                self.errors[type(exc).__name__] += 1
            return
        if counted:
            self.latencies.append(time.perf_counter() - due)
            self.statuses[status] += 1
        if reusable:
            self.idle.append(conn)
        else:
            conn[1].close()

    async def pace(self, rate: float, seconds: float, counted: bool) -> None:
        """Sends ``rate`` requests a second for ``seconds`` on a fixed schedule whatever the
        answers do; a latency counts from when its request was due, so a stall is charged to
        every request it delays (wrk2's way), then waits for the last answers."""
        tasks = []
        start = time.perf_counter() + 0.01
        for i in range(int(rate * seconds)):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(self.fetch(due, counted)))
        await asyncio.gather(*tasks)

    def result(self) -> dict[str, object]:
        self.latencies.sort()

        def pct(p: float) -> float | None:
            n = len(self.latencies)
            return self.latencies[min(n - 1, int(p * n))] * 1000 if n else None

        for _, writer in self.idle:
            writer.close()
        return {"requests": len(self.latencies), "p50_ms": pct(0.50), "p99_ms": pct(0.99),
                "non_200": sum(n for s, n in self.statuses.items() if s != 200), "errors": dict(self.errors)}


async def _open_loop(urls: list[str], rate: float, slices: int, slice_seconds: float) -> list[dict[str, object]]:
    """Paces every URL in turn, one slice each, ``slices`` times after one uncounted warm-up
    slice: a disturbance from outside lands on one slice of one target, not on a whole run."""
    clients = [PacedClient(url) for url in urls]
    for client in clients:
        await client.pace(rate, slice_seconds, counted=False)
    for _ in range(slices):
        for client in clients:
            await client.pace(rate, slice_seconds, counted=True)
    return [client.result() for client in clients]


def run(argv: list[str]) -> None:
    rate, slices, slice_seconds, urls = float(argv[0]), int(argv[1]), float(argv[2]), argv[3:]
    try:
        import uvloop
    except ImportError:
        results = asyncio.run(_open_loop(urls, rate, slices, slice_seconds))
    else:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            results = runner.run(_open_loop(urls, rate, slices, slice_seconds))
    print(json.dumps(results))


@dataclass
class Paced:
    """One fixed-rate run."""
    rate: int
    target: str
    p50_ms: float | None
    p99_ms: float | None
    failed: int  # non-200 answers plus errors


def paced_latency(targets: list[tuple[str, str]], rate: int, seconds: float, cpus: str | None = None) -> list[Paced]:
    """Latency of each (name, url) at ``rate`` per second, ``seconds`` each in 1 s slices taken
    in turn, measured by this script in a subprocess (pinned to ``cpus`` if given)."""
    slices = max(1, round(seconds))
    cmd = [sys.executable, str(Path(__file__).resolve()), str(rate), str(slices), f"{seconds / slices:g}",
           *(url for _, url in targets)]
    cmd = pinned(cpus, cmd) if cpus else cmd
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=2 * (slices + 1) * len(targets) * seconds / slices + 60)
    if done.returncode != 0:
        raise RuntimeError(f"open-loop generator failed: {done.stderr.strip()[-2000:]}")
    return [Paced(rate, name, r["p50_ms"], r["p99_ms"], r["non_200"] + sum(r["errors"].values()))
            for (name, _), r in zip(targets, json.loads(done.stdout.strip().splitlines()[-1]))]


def print_latency(rows: list[Paced]) -> None:
    print(f"{'rate/s':>6} {'target':<14} {'p50 ms':>7} {'p99 ms':>7} {'+p50 ms':>8} {'+p99 ms':>8} {'failed':>6}")
    direct = {r.rate: r for r in rows if r.target == "direct"}

    def ms(value: float | None, spec: str = ".2f") -> str:
        return "-" if value is None else format(value, spec)

    for r in rows:
        base = direct.get(r.rate)
        added50 = added99 = None
        if r.target != "direct" and base and None not in (r.p50_ms, r.p99_ms, base.p50_ms, base.p99_ms):
            added50 = r.p50_ms - base.p50_ms  # type: ignore[operator]
            added99 = r.p99_ms - base.p99_ms  # type: ignore[operator]
        print(f"{r.rate:>6} {r.target:<14} {ms(r.p50_ms):>7} {ms(r.p99_ms):>7} {ms(added50, '+.2f'):>8} "
              f"{ms(added99, '+.2f'):>8} {r.failed:>6}")


if __name__ == "__main__":
    run(sys.argv[1:])
