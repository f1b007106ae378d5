"""Running the gateway: the listening socket, N worker processes, signals and drain.

With ``workers: 1`` the one process serves, and reloads on SIGHUP or a changed file. With
more, a supervisor binds the socket, forks the workers (which share it), restarts a worker
that dies, decides reloads and passes them on as SIGHUP, and on SIGTERM passes the signal
on and exits 0 once every worker has drained.
"""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import logging
import os
import resource
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from aiohttp import web

from gateway import log_lines
from gateway.config.loader import Settings, Source
from gateway.config.problems import ConfigError

if TYPE_CHECKING:
    from gateway.reload import Reloader

log = logging.getLogger("gateway")

RESTART_PAUSE = 1.0
_OPEN_FILES_UNBOUNDED = 1024 * 1024  # what "unlimited" is taken as (Linux's default nr_open)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def anonymous_exposure(settings: Settings) -> str | None:
    """Why serving as configured would open the vendors to anyone, or None."""
    config = settings.config
    host, port = config.address
    if config.callers or config.allow_anonymous or is_loopback(host):
        return None
    return (
        f"refusing to listen on {host}:{port} without callers: anyone who can reach it could use "
        "your vendor credentials. Configure callers with keys, listen on 127.0.0.1, or set "
        "allow_anonymous: true if a network boundary protects the gateway."
    )


def bind(settings: Settings) -> socket.socket:
    host, port = settings.config.address
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=1024)


def serve(settings: Settings, source: Source | None = None) -> int:
    """Serve until SIGTERM or SIGINT; 0 after a clean drain. Raises OSError if it cannot bind.
    SIGHUP (and, with ``watch``, a changed file) reloads from ``source``."""
    raise_open_files_limit()
    # Held back until the reload handlers are in place: their default action would end
    # the process.
    signal.pthread_sigmask(signal.SIG_BLOCK, _RELOAD_SIGNALS)
    if settings.config.workers == 1:
        return _run_worker(settings, source, None)
    return _supervise(settings, source)


def raise_open_files_limit() -> None:
    """Lift the soft limit on open files to the hard one: every caller's connection (slow
    ones included, until header_timeout) and every vendor connection takes one, and the
    usual soft limit of 1024 would turn callers away long before the process is busy."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else _OPEN_FILES_UNBOUNDED
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError) as exc:
            log.warning("open files limit stays at %d: %s", soft, exc)


def _announce(settings: Settings, sock: socket.socket) -> None:
    host, port = sock.getsockname()[:2]
    log.info(
        "gateway listening on %s:%d with %d vendor(s), storage %s, %d worker(s)",
        host, port, len(settings.policies), settings.config.storage.split("@")[-1], settings.config.workers,
    )


def _run_worker(settings: Settings, source: Source | None, sock: socket.socket | None) -> int:
    """Serve in this process: alone (``sock`` None: it binds, watches and reloads itself)
    or as a supervisor's worker on its socket. 0 after a clean drain, 1 when it stopped so
    that the supervisor restarts it."""
    try:
        import uvloop
    except ImportError:
        loop_factory = None
    else:
        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(_serve_until_signal(settings, source, sock))


async def _serve_until_signal(settings: Settings, source: Source | None, sock: socket.socket | None) -> int:
    # Imported here: with workers the supervisor must set PROMETHEUS_MULTIPROC_DIR
    # before prometheus_client is first imported.
    from gateway.app import build_app, server_options
    from gateway.server import GatewayRunner
    from gateway.state import DRAINING, RELOADER

    stop = asyncio.Event()
    code = 0
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    supervised = sock is not None
    from gateway.logs import AccessLog, JsonAccessLog

    app = build_app(settings, source)
    runner = GatewayRunner(
        app,
        handle_signals=False,
        shutdown_timeout=settings.config.drain,
        access_log_class=JsonAccessLog if settings.config.log_format == "json" else AccessLog,
        **server_options(settings),
    )
    # The app's resources (storage, data_dir) open before the port does: a start that fails
    # there exits with one line, and no caller is ever accepted only to be reset.
    await runner.setup()
    if sock is None:
        try:
            sock = bind(settings)
        except OSError:
            await runner.cleanup()
            raise
        _announce(settings, sock)
    reloader = app[RELOADER]
    reloader.supervised = supervised

    def restart() -> None:
        nonlocal code
        code = 1
        stop.set()

    reloader.on_failure = restart
    reloads: set[asyncio.Task[Any]] = set()

    def reload_soon() -> None:
        if not stop.is_set():  # draining: what is left to serve keeps the snapshot it has
            _track(reloads, reloader.follow_supervisor() if supervised else reloader.reload())

    loop.add_signal_handler(signal.SIGHUP, reload_soon)
    if supervised:
        loop.add_signal_handler(signal.SIGUSR1, lambda: _track(reloads, reloader.supervisor_refused()))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _RELOAD_SIGNALS)
    watching = None
    if not supervised and source is not None and settings.config.watch:
        watching = asyncio.create_task(_watch(reloader, stop))
    site = web.SockSite(runner, sock)
    # What start-up made lives as long as the process: the collector stops walking it, so
    # a full collection (every few thousand requests) costs microseconds, not milliseconds.
    gc.collect()
    gc.freeze()
    # A request leaves no reference cycle (tests/test_proxy.py holds it), so what the
    # collector walks is mostly the requests in flight, alive still: at the default 700
    # allocations per young collection, at full load that was 5% of the CPU for nothing.
    gc.set_threshold(10_000, 10, 10)
    await site.start()
    await stop.wait()
    # A reload under way finishes first: stopping it half-way would leave what it opened.
    await asyncio.gather(*reloads, *([watching] if watching else []), return_exceptions=True)
    log.info("draining: no new connections, up to %gs for requests in flight", settings.config.drain)
    app[DRAINING].append(True)
    await runner.cleanup()
    log.info("stopped")
    return code


def _track(tasks: set[asyncio.Task[Any]], work: Coroutine[Any, Any, Any]) -> None:
    task = asyncio.create_task(work)
    tasks.add(task)
    task.add_done_callback(tasks.discard)


async def _watch(reloader: Reloader, stop: asyncio.Event) -> None:
    """A lone process's own watching until ``stop``: reload when a file changed (and settled)."""
    from gateway.reload import WATCH_INTERVAL, Watcher

    assert reloader.source is not None
    watcher = Watcher(reloader.source.config_file, reloader.live.current.settings.config.policies)
    while not stop.is_set():
        try:
            async with asyncio.timeout(WATCH_INTERVAL):
                await stop.wait()
        except TimeoutError:
            pass
        if not stop.is_set() and watcher.changed():
            await reloader.reload()
            watcher.follow(reloader.live.current.settings.config.policies)


_SUPERVISOR_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD}
_RELOAD_SIGNALS = {signal.SIGHUP, signal.SIGUSR1}  # apply the files / the files were refused


def _supervise(settings: Settings, source: Source | None) -> int:
    """Bind, fork the workers, and wait for signals and workers' exits, looking at the
    files between (with ``watch``). A reload is decided here: the supervisor reads the
    files, and only when they are valid passes SIGHUP to every worker, so that all apply
    the same snapshot; a worker that then cannot is restarted, with the new settings."""
    workers: dict[int, int] = {}
    stopping = False
    # Signals are taken synchronously (sigtimedwait), never in a handler: a reload or
    # a fork cannot be interrupted half-way by another signal.
    signal.pthread_sigmask(signal.SIG_BLOCK, _SUPERVISOR_SIGNALS)
    sock = bind(settings)
    _announce(settings, sock)
    metrics_dir = tempfile.mkdtemp(prefix="gateway-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    from prometheus_client import multiprocess  # only now: after the variable is set

    from gateway.metrics import Metrics
    from gateway.reload import WATCH_INTERVAL, Watcher, applied, load_next, problems_of, refused

    metrics = Metrics()
    watcher = Watcher(source.config_file, settings.config.policies) if source and settings.config.watch else None

    def start(index: int) -> None:
        pid = os.fork()
        if pid == 0:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SUPERVISOR_SIGNALS - _RELOAD_SIGNALS)
            code = 1
            try:
                code = _run_worker(settings, source, sock)
            except BaseException:
                log.exception("worker %d failed", index)
            finally:
                logging.shutdown()
                os._exit(code)
        workers[pid] = index

    def reload() -> None:
        nonlocal settings
        assert source is not None
        try:
            new = load_next(source, settings)
        except ConfigError as exc:
            refused(problems_of(exc), metrics)
            for pid in workers:
                _signal(pid, signal.SIGUSR1)
            return
        applied(settings, new, metrics)
        settings = new
        if watcher is not None:
            watcher.follow(settings.config.policies)
        for pid in workers:
            _signal(pid, signal.SIGHUP)

    try:
        for index in range(settings.config.workers):
            start(index)
        while workers:
            got = signal.sigtimedwait(_SUPERVISOR_SIGNALS, WATCH_INTERVAL)
            signum = got.si_signo if got is not None else None
            if signum in (signal.SIGTERM, signal.SIGINT) and not stopping:
                stopping = True
                sock.close()  # no more restarts: new connections must be refused, not queued
                for pid in workers:
                    _signal(pid, signal.SIGTERM)
            elif not stopping and source is not None and (
                signum == signal.SIGHUP or (signum is None and watcher is not None and watcher.changed())
            ):
                reload()
            while workers:
                pid, status = os.waitpid(-1, os.WNOHANG)
                if pid == 0:
                    break
                if pid not in workers:
                    continue
                index = workers.pop(pid)
                multiprocess.mark_process_dead(pid, metrics_dir)  # type: ignore[no-untyped-call]
                if not stopping:
                    log.error("worker %d (pid %d) exited with status %d; starting it again", index, pid, status)
                    time.sleep(RESTART_PAUSE)  # a worker that cannot start must not spin the CPU
                    start(index)
    finally:
        # Whatever ended the loop, no worker may outlive the supervisor holding the port.
        for pid in workers:
            _signal(pid, signal.SIGTERM)
        for pid in list(workers):
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        sock.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def configure_logging(log_format: str = "text") -> None:
    """Lines on stderr: text, or one JSON object each (gateway.log_lines) with ``log_format: json``."""
    log_lines.configure_logging(log_format, sys.stderr)
