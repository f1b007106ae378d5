"""Running the gateway: the listening socket, N worker processes, signals and drain.

With ``workers: 1`` the one process serves. With more, a supervisor binds the socket,
forks the workers (which share it), restarts a worker that dies, and on SIGTERM passes
the signal on and exits 0 once every worker has drained.
"""

from __future__ import annotations

import asyncio
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

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from gateway.config.loader import Settings

log = logging.getLogger("gateway")

RESTART_PAUSE = 1.0
_OPEN_FILES_UNBOUNDED = 1024 * 1024  # what "unlimited" is taken as (Linux's default nr_open)


class AccessLog(AbstractAccessLogger):
    """One line per request: peer, request line, status, bytes, seconds, request id.

    Built by hand: aiohttp's format-string logger costs a fifth of a proxied request.
    """

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        if not self.logger.isEnabledFor(logging.INFO):
            return
        self.logger.info(
            '%s "%s %s HTTP/%d.%d" %d %d %.4fs id=%s',
            request.remote, request.method, request.raw_path, request.version.major, request.version.minor,
            response.status, response.body_length, time, response.headers.get("X-Request-Id", "-"),
        )


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


def serve(settings: Settings) -> int:
    """Serve until SIGTERM or SIGINT; 0 after a clean drain. Raises OSError if it cannot bind."""
    raise_open_files_limit()
    if settings.config.workers == 1:
        return _run_worker(settings, None)
    return _supervise(settings)


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


def _run_worker(settings: Settings, sock: socket.socket | None) -> int:
    try:
        import uvloop
    except ImportError:
        loop_factory = None
    else:
        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_serve_until_signal(settings, sock))
    return 0


async def _serve_until_signal(settings: Settings, sock: socket.socket | None) -> None:
    # Imported here: with workers the supervisor must set PROMETHEUS_MULTIPROC_DIR
    # before prometheus_client is first imported.
    from gateway.app import build_app, server_options
    from gateway.server import GatewayRunner
    from gateway.state import DRAINING

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if sock is None:
        sock = bind(settings)
        _announce(settings, sock)
    from gateway.logs import JsonAccessLog

    app = build_app(settings)
    runner = GatewayRunner(
        app,
        handle_signals=False,
        shutdown_timeout=settings.config.drain,
        access_log_class=JsonAccessLog if settings.config.log_format == "json" else AccessLog,
        **server_options(settings),
    )
    await runner.setup()
    site = web.SockSite(runner, sock)
    await site.start()
    await stop.wait()
    log.info("draining: no new connections, up to %gs for requests in flight", settings.config.drain)
    app[DRAINING].append(True)
    await runner.cleanup()
    log.info("stopped")


def _supervise(settings: Settings) -> int:
    workers: dict[int, int] = {}
    stopping = False
    listening: list[socket.socket] = []

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for sock in listening:
            sock.close()  # no more restarts: new connections must be refused, not queued
        for pid in workers:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    sock = bind(settings)
    listening.append(sock)
    _announce(settings, sock)
    metrics_dir = tempfile.mkdtemp(prefix="gateway-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    from prometheus_client import multiprocess  # only now: after the variable is set

    def start(index: int) -> None:
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            code = 1
            try:
                code = _run_worker(settings, sock)
            except BaseException:
                log.exception("worker %d failed", index)
            finally:
                logging.shutdown()
                os._exit(code)
        workers[pid] = index

    try:
        for index in range(settings.config.workers):
            if not stopping:
                start(index)
        while workers:
            pid, status = os.wait()
            if pid not in workers:
                continue
            index = workers.pop(pid)
            multiprocess.mark_process_dead(pid, metrics_dir)  # type: ignore[no-untyped-call]
            if not stopping:
                log.error("worker %d (pid %d) exited with status %d; starting it again", index, pid, status)
                time.sleep(RESTART_PAUSE)  # a worker that cannot start must not spin the CPU
                if not stopping:
                    start(index)
    finally:
        sock.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


class TextFormatter(logging.Formatter):
    """One line per record; a record about a request ends with its ``id=`` (the
    ``X-Request-Id``), so every line of a request can be found from the caller's id."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        request_id = getattr(record, "request_id", None)
        return line if request_id is None or " id=" in line else f"{line} id={request_id}"


def configure_logging(log_format: str = "text") -> None:
    """Lines on stderr: text, or one JSON object each (gateway.logs) with ``log_format: json``."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        from gateway.logs import JsonFormatter

        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
