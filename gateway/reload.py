"""Reloading the config and policies while the gateway runs (CONTRACT.md "Lifecycle").

A reload reads the config file and every policy again, as the start did, and validates
them whole. Valid, the new snapshot replaces the old one in one step (``Live.current``: a
request takes it once, at its start, and keeps it to its end); invalid, the old one stays
in force and every problem is logged. What the running server cannot change (``listen``,
``workers``, storage, ``data_dir``, the callers' connection timeouts) stays as it is, with
a warning. ``Watcher`` notices changed files by polling; the wiring (gateway.app) builds
the new snapshot from the old, keeping what it can.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from gateway.config.loader import Settings, Source
from gateway.config.problems import ConfigError
from gateway.deadletters import DeadLetters
from gateway.metrics import Metrics
from gateway.pipeline import Pipeline
from gateway.tokens import TokenProvider
from gateway.upstream import UpstreamClients

log = logging.getLogger("gateway.reload")

# Config keys a running gateway keeps until it is restarted: the socket, the processes,
# the storage, and the options its server was started with.
RESTART_FIELDS = ("listen", "workers", "storage", "redis_cluster", "data_dir", "webhooks_listen",
                  "header_timeout", "keepalive_timeout")
WATCH_INTERVAL = 1.0  # seconds between looks at the files
SUPERVISOR_WAIT = 60.0  # how long a worker's reload API waits for the supervisor's reload


@dataclass(frozen=True)
class Snapshot:
    """What one consistent set of config and policies serves with."""

    settings: Settings
    pipeline: Pipeline
    tokens: Mapping[str, TokenProvider]
    clients: UpstreamClients
    dead_letters: DeadLetters
    loaded_at: float


class Live:
    """The snapshot in force, and the problems of the latest reload if it was refused."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.current = snapshot
        self.last_error: list[str] | None = None

    def status(self) -> dict[str, object]:
        loaded = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.current.loaded_at))
        return {"loaded_at": loaded, "last_error": self.last_error}


def load_next(source: Source, current: Settings) -> Settings:
    """The settings the files hold now, with the fields that need a restart kept as they
    are in ``current`` (and a warning saying so). Raises ConfigError."""
    new = source.load()
    pinned = {
        name: getattr(current.config, name)
        for name in RESTART_FIELDS
        if hasattr(new.config, name) and getattr(new.config, name) != getattr(current.config, name)
    }
    if pinned:
        log.warning("config reload: %s changed but need%s a restart: not applied (the rest is)",
                    ", ".join(pinned), "s" if len(pinned) == 1 else "")
        new = replace(new, config=replace(new.config, **pinned))
    return new


def refused(problems: list[str], metrics: Metrics) -> None:
    log.error("config reload refused, the old config and policies stay in force: %s", "; ".join(problems))
    metrics.config_reloads.labels("error").inc()


def applied(old: Settings, new: Settings, metrics: Metrics | None) -> None:
    """Say what a reload changed; count it when this process is the one that decided it."""
    added = sorted(new.policies.keys() - old.policies.keys())
    removed = sorted(old.policies.keys() - new.policies.keys())
    changed = sorted(v for v in new.policies.keys() & old.policies.keys() if new.policies[v] != old.policies[v])
    parts = [f"{what}: {', '.join(names)}" for what, names in
             (("added", added), ("removed", removed), ("changed", changed)) if names]
    if replace(new.config, source="") != replace(old.config, source=""):
        parts.append("gateway config changed")
    log.info("config reloaded: %d vendor(s); %s", len(new.policies), "; ".join(parts) or "nothing changed")
    if metrics is not None:
        metrics.config_reloads.labels("ok").inc()
        metrics.config_loaded.set(time.time())


def problems_of(exc: ConfigError) -> list[str]:
    return [str(problem) for problem in exc.problems]


class Reloader:
    """Reloads one process. Alone (``supervised`` False) it decides and counts every
    reload. Under a supervisor, the supervisor decides and counts: its SIGHUP says "the
    files are valid, apply them" (``on_failure`` is called if this process cannot, so
    that the supervisor restarts it), its SIGUSR1 "they were refused" (this process reads
    them to show the same problems); a reload asked of this process (the API) is asked of
    the supervisor, and answered once the supervisor's word arrived here."""

    def __init__(
        self,
        live: Live,
        source: Source | None,
        metrics: Metrics,
        rebuild: Callable[[Settings], Awaitable[None]],
    ) -> None:
        self.live = live
        self.source = source
        self.supervised = False
        self.on_failure: Callable[[], None] = lambda: None
        self.on_refused: Callable[[list[str]], None] = lambda problems: None  # notify's
        self._metrics = metrics
        self._rebuild = rebuild
        self._lock = asyncio.Lock()
        self._settled = asyncio.Event()

    async def reload(self) -> list[str]:
        """Reload as asked by an operator (the API, or SIGHUP to a lone process): the
        problems found, none when the new snapshot is in force."""
        if self.source is None:
            return ["(start): reload: this gateway was started without a source to read again"]
        if not self.supervised:
            return await self._apply(count=True)
        settled = self._settled
        os.kill(os.getppid(), signal.SIGHUP)
        try:
            async with asyncio.timeout(SUPERVISOR_WAIT):
                await settled.wait()
        except TimeoutError:
            return ["(supervisor): reload: no answer in time; the supervisor's log says why"]
        return self.live.last_error or []

    async def follow_supervisor(self) -> None:
        """Apply what the supervisor found valid; a process that cannot is restarted."""
        if self.source is not None and await self._apply(count=False):
            log.error("this worker could not apply the config the supervisor applied; it restarts")
            self.on_failure()

    async def supervisor_refused(self) -> None:
        """The supervisor kept the old snapshot: show why here too."""
        if self.source is None:
            return
        try:
            await asyncio.to_thread(self.source.load)
        except ConfigError as exc:
            self.live.last_error = problems_of(exc)
            self.on_refused(self.live.last_error)
        else:  # the files changed again since; the supervisor looks at them next
            self.live.last_error = ["(supervisor): reload refused; the supervisor's log says why"]
        self._settle()

    async def _apply(self, *, count: bool) -> list[str]:
        assert self.source is not None
        async with self._lock:
            old = self.live.current.settings
            try:
                new = await asyncio.to_thread(load_next, self.source, old)
            except ConfigError as exc:
                problems = problems_of(exc)
                self.live.last_error = problems
                if count:
                    refused(problems, self._metrics)
                    self.on_refused(problems)
                self._settle()
                return problems
            await self._rebuild(new)
            self.live.last_error = None
            applied(old, new, self._metrics if count else None)
            self._settle()
            return []

    def _settle(self) -> None:
        self._settled.set()
        self._settled = asyncio.Event()


class Watcher:
    """Notices a changed, added or removed config or policy file by polling. A change is
    reported once the files have stayed the same for one more look, so a file still
    being written is not read half-way; an editor's write to a temporary file renamed
    over the old one shows as a new inode."""

    def __init__(self, config_file: str | None, policies: str) -> None:
        self._config_file = config_file
        self._policies = policies
        self._seen = self._look()
        self._settling: object = None

    def follow(self, policies: str) -> None:
        """Watch ``policies`` from now on (a reload may have named another folder)."""
        if policies != self._policies:
            self._policies = policies
            self._seen = self._look()

    def changed(self) -> bool:
        now = self._look()
        if now == self._seen:
            self._settling = None
            return False
        if now != self._settling:
            self._settling = now
            return False
        self._seen = now
        self._settling = None
        return True

    def _look(self) -> tuple[object, ...]:
        files: list[tuple[str, object]] = []
        if self._config_file is not None:
            files.append((self._config_file, _stat(Path(self._config_file))))
        try:
            entries = sorted(Path(self._policies).iterdir())
        except OSError as exc:
            files.append((self._policies, exc.errno))
        else:
            files.extend((str(p), _stat(p)) for p in entries if p.suffix in (".yaml", ".yml"))
        return tuple(files)


def _stat(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)

