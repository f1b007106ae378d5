"""The wiring: the one place that knows every concrete piece of the gateway.

``build_app`` makes the aiohttp application: its routes (gateway.server, gateway.admin_api)
and, in ``cleanup_ctx``, its resources, opened on start and closed on stop once per
process: the storage backend chosen from the storage URL, the upstream client sessions,
the credential providers, and the budgets, breakers, cache, dead letters and attempts the
pipeline is made of. Handlers reach them through the typed app keys of gateway.state.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web

from gateway import admin_api, server
from gateway.attempts import Attempts
from gateway.auth_stops import AuthStops
from gateway.breakers import CircuitBreakers
from gateway.budgets import Budgets
from gateway.cache import ResponseCache
from gateway.config.loader import Settings
from gateway.config.model import JwtBearer, OAuth2
from gateway.console.console import ASSET_ROUTE, console, console_asset, console_without_key, to_console
from gateway.credentials import CredentialProvider, static_provider
from gateway.deadletters import DeadLetters
from gateway.metrics import Metrics
from gateway.notify import Notifier, Watch
from gateway.pipeline import Pipeline
from gateway.readers import readers_only
from gateway.token_encryption import Sealer
from gateway.server import count_errors, origin_form_only
from gateway.state import (
    AUTH_STOPS, BREAKERS, BUDGETS, DEAD_LETTERS, DRAINING, METRICS, NOTIFIER, PIPELINE, SETTINGS, STORAGE, TOKENS,
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


def build_app(settings: Settings) -> web.Application:
    """The application for ``settings``: its routes, and its resources opened on start."""
    app = web.Application(middlewares=[count_errors, origin_form_only])
    app[SETTINGS] = settings
    app[METRICS] = Metrics()
    app[DRAINING] = []
    app[admin_api.BULK_REPLAY] = asyncio.Lock()
    app.cleanup_ctx.append(_resources)
    app.router.add_get("/healthz", server.healthz)
    app.router.add_get("/readyz", server.readyz)
    app.router.add_get("/metrics", readers_only(server.metrics))
    app.router.add_get("/_gateway/status", readers_only(server.status))
    app.router.add_get("/_gateway/dead-letters", admin_api.list_dead_letters)
    app.router.add_get("/_gateway/dead-letters/{id}", admin_api.get_dead_letter)
    app.router.add_post("/_gateway/dead-letters/replay", admin_api.replay_dead_letters)
    app.router.add_post("/_gateway/dead-letters/{id}/replay", admin_api.replay_dead_letter)
    app.router.add_delete("/_gateway/dead-letters/{id}", admin_api.delete_dead_letter)
    app.router.add_get("/_gateway", to_console)
    app.router.add_get("/_gateway/", readers_only(console, console_without_key))
    app.router.add_get(ASSET_ROUTE, console_asset)
    # [\s\S]: the router matches decoded paths, and "." would stop at a decoded newline.
    app.router.add_route("*", r"/{tail:[\s\S]*}", server.proxy)
    return app


def _never() -> bool:
    return False


async def _resources(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    config = settings.config
    clients = UpstreamClients(settings.policies)
    storage = open_storage(
        config.storage, data_dir=config.relative(config.data_dir), cluster=config.redis_cluster, cache_max=config.cache_max
    )
    app[STORAGE] = storage
    token_session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
    sealer = Sealer(config.secret_key.reveal() if config.secret_key else None)
    credentials: dict[str, CredentialProvider] = {}
    tokens: dict[str, TokenProvider] = {}
    for vendor, policy in settings.policies.items():
        spec = policy.credentials
        static = static_provider(spec)
        if static is not None:
            credentials[vendor] = static
        elif isinstance(spec, OAuth2 | JwtBearer):
            tokens[vendor] = credentials[vendor] = TokenProvider(
                vendor, spec, storage, token_session, sealer, app[METRICS]
            )
    app[TOKENS] = tokens
    dead_letters = app[DEAD_LETTERS] = DeadLetters(storage, app[METRICS], settings.policies)
    breakers = app[BREAKERS] = CircuitBreakers(storage, app[METRICS])
    failing = {vendor: tokens[vendor].failing if vendor in tokens else _never for vendor in settings.policies}
    auth_stops = app[AUTH_STOPS] = AuthStops(storage, app[METRICS], failing)
    budgets = app[BUDGETS] = Budgets(storage, app[METRICS], config)
    attempts = Attempts(clients, credentials, breakers, auth_stops, budgets, app[METRICS])
    pipeline = app[PIPELINE] = Pipeline(
        settings, attempts, ResponseCache(storage, app[METRICS]), dead_letters, app[METRICS]
    )
    notifier = app[NOTIFIER] = Notifier(config.notify.url if config.notify else None, storage)
    watch = Watch(notifier, tokens, pipeline.answers, budgets.forecasts)
    breakers.watch(watch.breaker_changed)
    dead_letters.watch(watch.dead_letter_kept)
    auth_stops.watch(watch.credentials_rejected)
    storage.health.watch(watch.storage_changed)
    app[WATCH] = watch  # storage's health holds its listeners weakly
    notifier.start()
    watch.start()
    for vendor, policy in settings.policies.items():
        if policy.dead_letter:
            await dead_letters.count(vendor)
    for provider in tokens.values():
        provider.start()
    yield
    await watch.stop()
    await notifier.stop()
    await asyncio.gather(*(provider.stop() for provider in tokens.values()))
    await token_session.close()
    await clients.close()
    await storage.close()
