"""The wiring: the one place that knows every concrete piece of the gateway.

``build_app`` makes the aiohttp application: its routes (gateway.server, gateway.admin_api)
and, in ``cleanup_ctx``, its resources, opened on start and closed on stop once per
process: the storage backend chosen from the storage URL, the upstream client sessions,
the credential providers, the budgets, breakers, cache, dead letters and attempts the
pipeline is made of, and the stats every snapshot counts answers in (flushed in the
background). Handlers reach them through the typed app keys of gateway.state; the
snapshot of config and policies in force, and what is built from it, through ``LIVE``, which
a reload (gateway.reload) replaces in one step.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
from aiohttp import web

from gateway import admin_api, server
from gateway.attempts import Attempts
from gateway.auth_stops import AuthStops
from gateway.breakers import CircuitBreakers
from gateway.budgets import Budgets
from gateway.cache import ResponseCache
from gateway.config.loader import Settings, Source
from gateway.config.model import JwtBearer, OAuth2
from gateway.console.console import ASSET_ROUTE, console, console_asset, console_without_key, to_console
from gateway.credentials import CredentialProvider, static_provider
from gateway.deadletters import DeadLetters
from gateway.metrics import Metrics
from gateway.notify import Notifier, Watch
from gateway.core.notices import AnswerCounts
from gateway.pipeline import Pipeline
from gateway.readers import readers_only
from gateway.token_encryption import Sealer
from gateway.reload import Live, Reloader, Snapshot
from gateway.stats import Stats
from gateway.state import (
    AUTH_STOPS, BREAKERS, BUDGETS, DRAINING, LIVE, METRICS, NOTIFIER, RELOADER, SETTINGS, SOURCE, STATS, STORAGE,
    WATCH,
)
from gateway.storage import open_storage
from gateway.tokens import TokenProvider
from gateway.upstream import UpstreamClients


def server_options(settings: Settings) -> dict[str, Any]:
    """GatewayRunner's options from the config, the same for `gateway serve` and the tests."""
    return {
        # Request bodies pass to the vendor as sent: aiohttp would otherwise inflate a gzip
        # body while its Content-Encoding header still says gzip.
        "auto_decompress": False,
        "keepalive_timeout": settings.config.keepalive_timeout,
        "header_timeout": settings.config.header_timeout,
        # After an answer to a request whose body was not read whole (a 408 for a stalled
        # body, a 413), aiohttp reads on for this long so that the caller still sending is
        # not reset before it reads the answer; its default, 10 s, would hold a slow
        # caller's connection far past header_timeout.
        "lingering_time": min(2.0, settings.config.header_timeout),
    }


def build_app(settings: Settings, source: Source | None = None) -> web.Application:
    """The application for ``settings``: its routes, and its resources opened on start.
    ``source`` is where a reload reads the settings again (None: the app cannot reload)."""
    app = web.Application()  # no middleware: gateway.server.edge is around its handler
    app[SETTINGS] = settings
    app[SOURCE] = source
    app[METRICS] = Metrics()
    app[DRAINING] = []
    app[admin_api.BULK_REPLAY] = asyncio.Lock()
    app.cleanup_ctx.append(_resources)
    app.router.add_get("/healthz", server.healthz)
    app.router.add_get("/readyz", server.readyz)
    app.router.add_get("/metrics", readers_only(server.metrics))
    app.router.add_get("/_gateway/status", readers_only(server.status))
    app.router.add_post("/_gateway/reload", admin_api.reload)
    app.router.add_get("/_gateway/dead-letters", admin_api.list_dead_letters)
    app.router.add_get("/_gateway/dead-letters/{id}", admin_api.get_dead_letter)
    app.router.add_post("/_gateway/dead-letters/replay", admin_api.replay_dead_letters)
    app.router.add_post("/_gateway/dead-letters/{id}/replay", admin_api.replay_dead_letter)
    app.router.add_delete("/_gateway/dead-letters/{id}", admin_api.delete_dead_letter)
    app.router.add_get("/_gateway", to_console)
    app.router.add_get("/_gateway/", readers_only(console, console_without_key))
    app.router.add_get(ASSET_ROUTE, console_asset)
    catch_all = server.ProxyRoute()
    app.router.register_resource(catch_all)
    catch_all.add_route("*", server.proxy)
    return app


class _Wiring:
    """What every snapshot shares (storage, breakers, budgets, cache, the token session),
    and how a snapshot is built from the one before it, keeping what did not change."""

    def __init__(self, app: web.Application) -> None:
        config = app[SETTINGS].config
        self.metrics = app[METRICS]
        self.storage = open_storage(
            config.storage, data_dir=config.relative(config.data_dir), cluster=config.redis_cluster,
            cache_max=config.cache_max,
        )
        self.token_session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
        self.breakers = CircuitBreakers(self.storage, self.metrics)
        self.budgets = Budgets(self.storage, self.metrics, config)
        self.cache = ResponseCache(self.storage, self.metrics)
        # The snapshot's token providers and whether each fails, read by what outlives a
        # reload (auth stops, notifications): refilled by every build.
        self.tokens: dict[str, TokenProvider] = {}
        self.failing: dict[str, Callable[[], bool]] = {}
        self.auth_stops = AuthStops(self.storage, self.metrics, self.failing)
        self.answers = AnswerCounts()
        self.stats = Stats(self.storage)
        self.notifier = Notifier(config.notify.url if config.notify else None, self.storage)
        self.watch = Watch(self.notifier, self.tokens, self.answers, self.budgets.forecasts)
        self.breakers.watch(self.watch.breaker_changed)
        self.auth_stops.watch(self.watch.credentials_rejected)
        self.storage.health.watch(self.watch.storage_changed)
        self.live: Live | None = None
        self._retiring: set[asyncio.Task[None]] = set()

    async def build(self, settings: Settings, previous: Snapshot | None) -> Snapshot:
        config = settings.config
        clients = UpstreamClients(settings.policies, previous.clients if previous else None)
        sealer = Sealer(config.secret_key.reveal() if config.secret_key else None)
        credentials: dict[str, CredentialProvider] = {}
        tokens: dict[str, TokenProvider] = {}
        started: list[TokenProvider] = []
        for vendor, policy in settings.policies.items():
            spec = policy.credentials
            static = static_provider(spec)
            if static is not None:
                credentials[vendor] = static
            elif isinstance(spec, OAuth2 | JwtBearer):
                kept = previous.tokens.get(vendor) if previous else None
                if kept is not None and previous is not None and _same_token(previous.settings, settings, vendor):
                    tokens[vendor] = credentials[vendor] = kept
                else:
                    provider = TokenProvider(vendor, spec, self.storage, self.token_session, sealer, self.metrics)
                    tokens[vendor] = credentials[vendor] = provider
                    started.append(provider)
        dead_letters = DeadLetters(self.storage, self.metrics, settings.policies)
        dead_letters.watch(self.watch.dead_letter_kept)
        self.budgets.follow(config)
        self.tokens.clear()
        self.tokens.update(tokens)
        self.failing.clear()
        self.failing.update({v: tokens[v].failing if v in tokens else _never for v in settings.policies})
        self.auth_stops.refresh_gauges()
        attempts = Attempts(clients, credentials, self.breakers, self.auth_stops, self.budgets, self.metrics)
        pipeline = Pipeline(settings, attempts, self.cache, dead_letters, self.metrics, self.answers, self.stats)
        await dead_letters.count_every()
        for provider in started:
            provider.start()
        return Snapshot(settings, pipeline, tokens, clients, dead_letters, time.time())

    async def rebuild(self, settings: Settings) -> None:
        """Put a snapshot of ``settings`` in force, and retire what the old one alone used:
        its token providers at once, its client sessions once the requests in flight on
        them had the time a drain gives them."""
        assert self.live is not None
        old = self.live.current
        new = await self.build(settings, old)
        self.live.current = new
        for vendor, policy in new.settings.policies.items():
            if vendor in old.settings.policies and not _same_token(old.settings, new.settings, vendor):
                await self.auth_stops.credentials_changed(vendor)  # a new credential: the stop ends
        kept = {id(provider) for provider in new.tokens.values()}
        await asyncio.gather(*(p.stop() for p in old.tokens.values() if id(p) not in kept))
        retired = new.clients.retired(old.clients)
        if retired:
            task = asyncio.create_task(_close_after(retired, settings.config.drain))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    async def close(self) -> None:
        await self.stats.close()
        await self.watch.stop()
        await self.notifier.stop()
        for task in list(self._retiring):
            task.cancel()
        await asyncio.gather(*self._retiring, return_exceptions=True)
        if self.live is not None:
            await asyncio.gather(*(provider.stop() for provider in self.live.current.tokens.values()))
            await self.live.current.clients.close()
        await self.token_session.close()
        await self.storage.close()


def _never() -> bool:
    return False


def _same_token(old: Settings, new: Settings, vendor: str) -> bool:
    return (old.policies[vendor].credentials == new.policies[vendor].credentials
            and old.config.secret_key == new.config.secret_key)


async def _close_after(sessions: list[aiohttp.ClientSession], delay: float) -> None:
    try:
        await asyncio.sleep(delay)
    finally:
        await asyncio.gather(*(session.close() for session in sessions))


async def _resources(app: web.Application) -> AsyncIterator[None]:
    wiring = _Wiring(app)
    app[STORAGE] = wiring.storage
    app[BREAKERS] = wiring.breakers
    app[BUDGETS] = wiring.budgets
    app[AUTH_STOPS] = wiring.auth_stops
    app[NOTIFIER] = wiring.notifier
    app[WATCH] = wiring.watch  # storage's health holds its listeners weakly
    app[STATS] = wiring.stats
    try:
        snapshot = await wiring.build(app[SETTINGS], None)
        live = app[LIVE] = wiring.live = Live(snapshot)
        reloader = app[RELOADER] = Reloader(live, app[SOURCE], app[METRICS], wiring.rebuild)
        reloader.on_refused = lambda problems: wiring.notifier.reload_failed("; ".join(problems))
        wiring.notifier.start()
        wiring.watch.start()
        wiring.stats.wake()
        app[METRICS].config_loaded.set(snapshot.loaded_at)
        yield
    finally:
        await wiring.close()
