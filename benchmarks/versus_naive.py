#!/usr/bin/env python3
"""The gateway's full path against nginx and a naive one-page aiohttp proxy, in one run.

    python benchmarks/versus_naive.py [--duration 8] [--rounds 2] [--warmup 2] [--connections 50]
                                      [--no-latency] [--no-workers] [--profile FILE] [--keep-logs]

Every proxy fronts the same upstream, an nginx stub answering 64 bytes of JSON, so the
upstream costs almost nothing. Measured under ``wrk -t1 -c50``, rounds interleaved:

- nginx: ``proxy_pass`` with an upstream keep-alive pool;
- naive: ``naive_proxy.py`` (one page: route, a Redis EVALSHA token bucket, hop-by-hop
  header filter, bearer injected, body buffered, prometheus counter + histogram), on
  asyncio's loop and on uvloop (which the gateway runs on);
- gateway: ``gateway serve`` with Redis storage, a token bucket too large to refuse and a
  bearer credential (the full path: access log, metrics, stats, RateLimit headers).

Per round: req/s, p50/p99, CPU microseconds per request of the proxy's processes (from
/proc), Redis commands per request (INFO deltas), and how busy the cores were. Then the
ratios gateway/naive and gateway/nginx; the added p50/p99 over direct at a fixed rate
(open loop: 100 req/s and half the gateway's measured rate); and ``--workers 2`` against 1.
Where the machine has two cores, each proxy runs on core 0 and wrk, the stub, Redis and
the open-loop generator on core 1. Everything listens on 127.0.0.1 on free ports; every
subprocess is stopped at the end, on errors and on Ctrl-C too.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from _harness import (HOST, Processes, free_port, gateway_log_summary, group_cpu_seconds, leave, nginx_command, parse_wrk,
                      pinned, start_gateway, start_redis, summarise_profile, wait_ready)
from open_loop import Paced, paced_latency, print_latency

VENDOR = "bench"
ITEM = "/item/42"
AUTH_ECHO = "/_auth"  # the stub answers the Authorization it received: proves the credential arrived
STUB_BODY = b'{"id":42,"name":"item 42","price":19,"tags":["a","b"],"ok":true}'
TOKEN = "bench-vendor-token-0123456789"  # a stand-in vendor secret, sent only to the local stub
BUDGET = 1_000_000_000  # per second: a token bucket that never refuses
HERE = Path(__file__).resolve().parent
SCRIPT_CALLS = {"evalsha", "eval", "evalsha_ro", "eval_ro", "fcall", "fcall_ro"}


# --------------------------------------------------------------------------- the processes measured


@dataclass
class Target:
    name: str
    url: str
    pgid: int
    redis_url: str | None = None
    log: Path | None = None


@dataclass
class Cores:
    """Where things run: the proxy on ``proxy``, everything else on ``load`` (None: unpinned)."""
    proxy: str | None
    load: str | None

    def cmd(self, cmd: list[str]) -> list[str]:
        return pinned(self.load, cmd) if self.load else cmd


def start_stub(procs: Processes, nginx: str, cores: Cores) -> str:
    port = free_port()
    http = f"""\
    keepalive_requests 1000000;
    server {{
        listen {HOST}:{port};
        location / {{
            default_type application/json;
            return 200 '{STUB_BODY.decode()}';
        }}
        location = {AUTH_ECHO} {{
            default_type text/plain;
            return 200 $http_authorization;
        }}
    }}"""
    proc = procs.start("stub", nginx_command(nginx, procs.workdir / "stub", http), cpus=cores.load)
    url = f"http://{HOST}:{port}"
    wait_ready(url + ITEM, proc)
    return url


def start_nginx_proxy(procs: Processes, nginx: str, stub: str, connections: int, cores: Cores) -> Target:
    port = free_port()
    http = f"""\
    keepalive_requests 1000000;
    upstream stub {{
        server {stub.removeprefix("http://")};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen {HOST}:{port};
        location / {{
            proxy_pass http://stub;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}"""
    cmd = nginx_command(nginx, procs.workdir / "nginx", http, worker_connections=max(512, 2 * connections + 128))
    proc = procs.start("nginx", cmd, cpus=cores.proxy)
    url = f"http://{HOST}:{port}{ITEM}"
    wait_ready(url, proc)
    return Target("nginx", url, proc.pid)


def start_naive(procs: Processes, stub: str, uvloop: bool, cores: Cores) -> Target:
    redis_url = start_redis(procs, cpus=cores.load)
    port = free_port()
    name = "naive-uvloop" if uvloop else "naive"
    cmd = [sys.executable, str(HERE / "naive_proxy.py"), "--listen", f"{HOST}:{port}", "--redis", redis_url,
           "--route", f"{VENDOR}={stub}", "--limit", str(BUDGET), "--per", "1"] + (["--uvloop"] if uvloop else [])
    proc = procs.start(name, cmd, env={"NAIVE_TOKEN": TOKEN}, cpus=cores.proxy)
    base = f"http://{HOST}:{port}"
    wait_ready(base + "/metrics", proc)
    return Target(name, f"{base}/{VENDOR}{ITEM}", proc.pid, redis_url, procs.workdir / f"{name}.log")


def start_full_gateway(procs: Processes, stub: str, workers: int, cpus: str | None, cores: Cores) -> Target:
    redis_url = start_redis(procs, cpus=cores.load)
    token_file = procs.workdir / f"token-{workers}"
    token_file.write_text(TOKEN)
    policy = (f"vendor: {VENDOR}\nupstream: {stub}\n"
              f'credentials: {{type: bearer, token: "${{file:{token_file}}}"}}\n'
              f"budgets:\n  - {{name: burst, limit: {BUDGET}, per: 1s}}\n")
    base, proc = start_gateway(procs, [policy], f"storage: {redis_url}\n", workers=workers, cpus=cpus)
    name = "gateway" if workers == 1 else f"gateway-w{workers}"
    return Target(name, f"{base}/{VENDOR}{ITEM}", proc.pid, redis_url,
                  procs.workdir / f"gateway-{base.rsplit(':', 1)[1]}.log")


def check_target(target: Target) -> str:
    """What the probe saw; raises when the target does not serve the stub's answer or (for a
    proxy that should) the credential does not reach the stub."""
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(target.url, timeout=10) as response:
        body, headers = response.read(), response.headers
    if body != STUB_BODY:
        raise RuntimeError(f"{target.name} answered {body[:100]!r}, not the stub's body")
    seen = ["body ok"]
    if target.name != "nginx":
        with opener.open(target.url.replace(ITEM, AUTH_ECHO), timeout=10) as response:
            if response.read().decode() != f"Bearer {TOKEN}":
                raise RuntimeError(f"{target.name} did not send the bearer credential upstream")
        seen.append("bearer injected")
    if target.name.startswith("gateway"):
        missing = [h for h in ("RateLimit", "RateLimit-Policy", "X-Request-Id") if h not in headers]
        if missing:
            raise RuntimeError(f"{target.name} answered without {', '.join(missing)}")
        seen.append(f"RateLimit: {headers['RateLimit']}")
    return ", ".join(seen)


# --------------------------------------------------------------------------- measuring


@dataclass
class Round:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    failed: int  # non-2xx answers plus socket errors
    cpu_us: float | None  # proxy CPU per request
    proxy_cpu: float | None  # % of one core the proxy's processes used
    redis_per_request: float | None  # every command Redis ran, those a script runs included
    scripts_per_request: float | None  # EVALSHA and its kin: the round trips that run a script
    redis_commands: Counter[str] = field(default_factory=Counter)  # per command, whole round
    core_busy: dict[int, float] = field(default_factory=dict)  # % of each core, everything on it


def redis_snapshot(url: str | None) -> tuple[int, Counter[str]] | None:
    if url is None:
        return None
    import redis

    client = redis.Redis.from_url(url)
    try:
        total = int(client.info("stats")["total_commands_processed"])
        per_command = Counter({name.removeprefix("cmdstat_"): int(stats["calls"])
                               for name, stats in client.info("commandstats").items()})
    finally:
        client.close()
    return total, per_command


def core_ticks() -> dict[int, tuple[int, int]]:
    """(busy, total) clock ticks of each core since boot."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if name.startswith("cpu") and name[3:].isdigit():
            ticks = [int(v) for v in values]
            out[int(name[3:])] = (sum(ticks) - ticks[3] - ticks[4], sum(ticks))
    return out


def wrk(target: Target, seconds: float, connections: int, cores: Cores) -> Round:
    cmd = cores.cmd(["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", "--timeout", "10s",
                     target.url])
    redis_before, cpu_before, cores_before = redis_snapshot(target.redis_url), group_cpu_seconds(target.pgid), core_ticks()
    started = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    elapsed = time.monotonic() - started
    redis_after, cpu_after, cores_after = redis_snapshot(target.redis_url), group_cpu_seconds(target.pgid), core_ticks()
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    numbers = parse_wrk(done.stdout)
    requests = int(numbers["requests"] or 0)  # type: ignore[call-overload]
    cpu_us = proxy_cpu = None
    if cpu_before is not None and cpu_after is not None and requests:
        cpu_us = (cpu_after - cpu_before) * 1e6 / requests
        proxy_cpu = 100 * (cpu_after - cpu_before) / elapsed
    redis_per_request = scripts_per_request = None
    commands = Counter[str]()
    if redis_before and redis_after and requests:
        commands = redis_after[1] - redis_before[1]
        own = commands.pop("info", 0)  # the snapshots' own INFO calls
        redis_per_request = (redis_after[0] - redis_before[0] - own) / requests
        scripts_per_request = sum(n for cmd, n in commands.items() if cmd in SCRIPT_CALLS) / requests
    busy = {core: 100.0 * (cores_after[core][0] - b) / max(1, cores_after[core][1] - t)
            for core, (b, t) in cores_before.items() if core in cores_after}
    return Round(float(numbers["rps"]), float(numbers["p50_ms"]), float(numbers["p99_ms"]),  # type: ignore[arg-type]
                 requests, int(numbers["non_2xx"]) + int(numbers["errors"]),  # type: ignore[call-overload]
                 cpu_us, proxy_cpu, redis_per_request, scripts_per_request, commands, busy)


# --------------------------------------------------------------------------- printing


def span(values: list[float], spec: str) -> str:
    low, high = min(values), max(values)
    return format(low, spec) if format(low, spec) == format(high, spec) else f"{format(low, spec)}-{format(high, spec)}"


def mean(rounds: list[Round], attr: str) -> float | None:
    values = [getattr(r, attr) for r in rounds if getattr(r, attr) is not None]
    return statistics.fmean(values) if values else None


def print_rounds(results: dict[str, list[Round]], cores: Cores) -> None:
    header = f"{'target':<14} {'round':>5} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'CPU us/req':>10} " \
             f"{'proxy CPU':>9} {'Redis cmd/req':>13} {'EVALSHA/req':>11} {'failed':>6}  core busy %"
    print(header)
    print("-" * len(header))
    for name, rounds in results.items():
        for i, r in enumerate(rounds, 1):
            busy = " ".join(f"{core}:{pct:.0f}" for core, pct in sorted(r.core_busy.items()))
            print(f"{name:<14} {i:>5} {r.rps:>8,.0f} {r.p50_ms:>7.2f} {r.p99_ms:>7.2f} "
                  f"{'-' if r.cpu_us is None else f'{r.cpu_us:.0f}':>10} "
                  f"{'-' if r.proxy_cpu is None else f'{r.proxy_cpu:.0f}%':>9} "
                  f"{'-' if r.redis_per_request is None else f'{r.redis_per_request:.2f}':>13} "
                  f"{'-' if r.scripts_per_request is None else f'{r.scripts_per_request:.2f}':>11} {r.failed:>6}  {busy}")
    for name, rounds in results.items():
        for i, r in enumerate(rounds, 1):
            if r.scripts_per_request is not None and r.scripts_per_request < 0.98:
                print(f"! {name} round {i}: {r.scripts_per_request:.2f} EVALSHA per request: some requests were not "
                      "charged in Redis (a storage fallback? see the log lines at the end); not the full path")
    if cores.proxy:
        print(f"(proxy CPU: % of one core its processes used; core busy: everything on that core, other "
              f"programs' too; proxy on core {cores.proxy}, load on core {cores.load}. Redis cmd/req counts the "
              f"commands a script runs as well; EVALSHA/req is the script calls)")


def print_summary(results: dict[str, list[Round]]) -> None:
    print(f"{'target':<14} {'req/s':>13} {'p50 ms':>11} {'p99 ms':>11} {'CPU us/req':>11} {'Redis cmd/req':>13}")
    for name, rounds in results.items():
        cpu = [r.cpu_us for r in rounds if r.cpu_us is not None]
        redis = [r.redis_per_request for r in rounds if r.redis_per_request is not None]
        print(f"{name:<14} {span([r.rps for r in rounds], ',.0f'):>13} {span([r.p50_ms for r in rounds], '.2f'):>11} "
              f"{span([r.p99_ms for r in rounds], '.2f'):>11} {span(cpu, '.0f') if cpu else '-':>11} "
              f"{span(redis, '.2f') if redis else '-':>13}")
    for name, rounds in results.items():
        commands = sum((r.redis_commands for r in rounds), Counter[str]())
        requests = sum(r.requests for r in rounds)
        if commands and requests:
            each = ", ".join(f"{cmd} {n / requests:.3f}" for cmd, n in commands.most_common(6))
            print(f"  {name} Redis commands per request: {each}")


def print_ratios(results: dict[str, list[Round]]) -> None:
    gateway = results.get("gateway")
    if not gateway:
        return
    gw_rps, gw_cpu = mean(gateway, "rps"), mean(gateway, "cpu_us")
    print(f"{'ratio (means of the rounds)':<30} {'req/s':>8} {'CPU us/req':>11}")
    for name in ("naive", "naive-uvloop", "nginx"):
        if name not in results:
            continue
        rps, cpu = mean(results[name], "rps"), mean(results[name], "cpu_us")
        rps_ratio = gw_rps / rps if gw_rps and rps else None
        cpu_ratio = gw_cpu / cpu if gw_cpu and cpu else None
        line = (f"{'gateway / ' + name:<30} {'-' if rps_ratio is None else f'{rps_ratio:.2f}x':>8} "
                f"{'-' if cpu_ratio is None else f'{cpu_ratio:.2f}x':>11}")
        if name == "nginx" and rps_ratio is not None:
            line += f"   (the gateway does {100 * rps_ratio:.1f}% of nginx's req/s)"
        elif rps_ratio is not None and cpu_ratio is not None:
            verdict = "yes" if rps_ratio >= 1.0 and cpu_ratio <= 1.0 else "no"
            line += f"   at or under the peer (CPU <= 1.0x and req/s >= 1.0x): {verdict}"
        print(line)


# --------------------------------------------------------------------------- the profile


def profile_gateway(procs: Processes, target: Target, seconds: float, connections: int, cores: Cores,
                    out: Path) -> list[str]:
    """py-spy samples the gateway under wrk; returns the top costs by module."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        return ["profile: py-spy not found (pip install py-spy)"]
    recorder = procs.start("py-spy", [py_spy, "record", "-d", f"{seconds:g}", "-r", "200", "-f", "raw", "-o", str(out),
                                      "-p", str(target.pgid)], cpus=cores.load)
    time.sleep(0.5)
    wrk(target, seconds + 1, connections, cores)
    recorder.wait(seconds + 30)
    procs.stop(recorder)
    return summarise_profile(out)


# --------------------------------------------------------------------------- the run


def choose_cores() -> Cores:
    if shutil.which("taskset") and {0, 1} <= os.sched_getaffinity(0):
        return Cores("0", "1")
    return Cores(None, None)


def loadavg() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=8, help="seconds per measured round (default 8)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per target, interleaved (default 2)")
    parser.add_argument("--warmup", type=float, default=2, help="unmeasured seconds before a target's first round")
    parser.add_argument("--connections", type=int, default=50, help="wrk connections (default 50)")
    parser.add_argument("--no-latency", action="store_true", help="skip the fixed-rate latency runs")
    parser.add_argument("--no-workers", action="store_true", help="skip gateway --workers 2")
    parser.add_argument("--profile", type=Path, metavar="FILE",
                        help="also profile the gateway with py-spy under wrk; raw stacks go to FILE")
    parser.add_argument("--keep-logs", action="store_true", help="keep the temp dir with configs and logs")
    args = parser.parse_args(argv)
    for name, low, high in (("duration", 1, 120), ("rounds", 1, 5), ("warmup", 0, 30), ("connections", 1, 1000)):
        if not low <= getattr(args, name) <= high:
            parser.error(f"--{name} must be between {low} and {high}")
    nginx, wrk_binary = shutil.which("nginx"), shutil.which("wrk")
    if not nginx or not wrk_binary:
        raise SystemExit("needs nginx and wrk on PATH (apt-get install nginx-light wrk)")
    cores = choose_cores()
    signal.signal(signal.SIGTERM, _stop_on_sigterm)

    print(f"versus naive: {args.rounds} rounds of {args.duration:g}s per target under wrk -t1 -c{args.connections} "
          f"(after {args.warmup:g}s warm-up), {os.cpu_count()} CPU(s), load average {loadavg()}")
    print(f"pinning: proxy on core {cores.proxy}, wrk + stub + Redis + open-loop generator on core {cores.load}"
          if cores.proxy else "pinning: none (taskset or a second core missing): every process shares every core")
    workdir = Path(tempfile.mkdtemp(prefix="versus-naive-"))
    procs = Processes(workdir)
    results: dict[str, list[Round]] = {}
    notes: list[str] = []
    try:
        stub = start_stub(procs, nginx, cores)
        print(f"upstream: nginx stub {stub}{ITEM} -> {len(STUB_BODY)} B of JSON")
        targets = [start_nginx_proxy(procs, nginx, stub, args.connections, cores),
                   start_naive(procs, stub, False, cores), start_naive(procs, stub, True, cores),
                   start_full_gateway(procs, stub, 1, cores.proxy, cores)]
        for target in targets:
            print(f"  {target.name:<14} {target.url}: {check_target(target)}")
        print()
        for round_no in range(args.rounds):
            for target in targets:
                if round_no == 0 and args.warmup:
                    wrk(target, args.warmup, args.connections, cores)
                print(f"round {round_no + 1}: {target.name} ...", flush=True)
                results.setdefault(target.name, []).append(wrk(target, args.duration, args.connections, cores))
        gateway = targets[-1]

        latency: list[Paced] = []
        if not args.no_latency:
            half = max(1, round((mean(results["gateway"], "rps") or 2) / 2))
            for rate in sorted({100, half}):
                print(f"open loop {rate}/s: direct, {', '.join(t.name for t in targets)} in turn ...", flush=True)
                latency += paced_latency([("direct", stub + ITEM)] + [(t.name, t.url) for t in targets], rate,
                                         args.duration, cores.load)

        profile: list[str] = []
        if args.profile:
            print("profile: gateway under wrk with py-spy ...", flush=True)
            profile = profile_gateway(procs, gateway, args.duration, args.connections, cores, args.profile)
        notes += gateway_log_summary(gateway.log) if gateway.log else []

        if not args.no_workers:
            procs.stop(next(p for p in procs.running if p.pid == gateway.pgid))
            both = ",".join(c for c in (cores.proxy, cores.load) if c) or None
            second = start_full_gateway(procs, stub, 2, both, cores)
            print(f"  {second.name:<14} {second.url}: {check_target(second)}")
            if args.warmup:
                wrk(second, args.warmup, args.connections, cores)
            for round_no in range(args.rounds):
                print(f"round {round_no + 1}: {second.name} ...", flush=True)
                results.setdefault(second.name, []).append(wrk(second, args.duration, args.connections, cores))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        if results:
            print_rounds(results, cores)
        return 1
    finally:
        procs.stop_all()
        leave(workdir, args.keep_logs)

    print()
    print_rounds(results, cores)
    print()
    print_summary(results)
    print()
    print_ratios(results)
    if latency:
        print()
        print(f"latency at a fixed rate (open loop; {args.duration:g}s per target in 1s slices taken in turn after a "
              "warm-up slice; from each request's due time; +: added over direct at the same rate)")
        print_latency(latency)
    if "gateway-w2" in results:
        print()
        w1, w2 = results["gateway"], results["gateway-w2"]
        print(f"workers: 2 against 1: req/s {span([r.rps for r in w2], ',.0f')} against {span([r.rps for r in w1], ',.0f')}"
              f", CPU us/req {span([r.cpu_us for r in w2 if r.cpu_us], '.0f')} against "
              f"{span([r.cpu_us for r in w1 if r.cpu_us], '.0f')}")
        if cores.proxy:
            print("  (2 workers run on cores 0 and 1; the second shares core 1 with wrk, the stub and Redis, so this "
                  "box can show what a second worker costs per request, not how req/s scales with cores)")
    for line in profile:
        print(line)
    print()
    for note in notes:
        print(note)
    print(f"load average at the end: {loadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
