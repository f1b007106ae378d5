"""The aiohttp application: the gateway's own endpoints and the proxy route.

Typed app state lives under AppKeys; the upstream sessions and the storage client are
opened and closed in ``cleanup_ctx``, once per process.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web

from gateway import admin_api
from gateway.breakers import CircuitBreakers
from gateway.budgets import Budgets
from gateway.cache import ResponseCache
from gateway.config.loader import Settings
from gateway.config.model import JwtBearer, OAuth2
from gateway.credentials import CredentialProvider, static_provider
from gateway.connections import CallerServer
from gateway.console.console import ASSET_ROUTE, console, console_asset, to_console
from gateway.errors import BadRequest, GatewayError, MethodNotAllowed, StorageError
from gateway.letterbox import DeadLetterBox
from gateway.metrics import Metrics
from gateway.pipeline import GATEWAY_ERROR, Pipeline, problem_response, request_id
from gateway.sealing import Sealer
from gateway.storage import open_storage
from gateway.tokens import TokenProvider
from gateway.state import DRAINING, METRICS, PIPELINE, SETTINGS, STORAGE, TOKENS
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


class GatewayRunner(web.AppRunner):
    """aiohttp's runner for the app, whose callers' connections keep the head deadline
    (gateway.connections)."""

    __slots__ = ("_header_timeout",)

    def __init__(self, app: web.Application, *, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._header_timeout = header_timeout

    async def _make_server(self) -> web.Server:
        metrics = self.app[METRICS]

        def refused(err: GatewayError) -> None:
            metrics.requests.labels("unknown", "OTHER", str(err.status), "unauthenticated").inc()
            metrics.errors.labels("unknown", err.type).inc()

        made = await super()._make_server()
        return CallerServer(made, header_timeout=self._header_timeout, refused=refused)


def build_app(settings: Settings) -> web.Application:
    app = web.Application(middlewares=[_count_errors, _origin_form_only])
    app[SETTINGS] = settings
    app[METRICS] = Metrics()
    app[DRAINING] = []
    app.cleanup_ctx.append(_resources)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/_gateway/status", status)
    app.router.add_get("/_gateway", to_console)
    app.router.add_get("/_gateway/", console)
    app.router.add_get(ASSET_ROUTE, console_asset)
    app.router.add_get("/_gateway/dead-letters", admin_api.list_dead_letters)
    app.router.add_get("/_gateway/dead-letters/{id}", admin_api.get_dead_letter)
    app.router.add_post("/_gateway/dead-letters/{id}/replay", admin_api.replay_dead_letter)
    app.router.add_delete("/_gateway/dead-letters/{id}", admin_api.delete_dead_letter)
    # [\s\S]: the router matches decoded paths, and "." would stop at a decoded newline.
    app.router.add_route("*", r"/{tail:[\s\S]*}", proxy)
    return app


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
    letterbox = DeadLetterBox(storage, app[METRICS], settings.policies)
    app[PIPELINE] = Pipeline(
        settings,
        clients,
        credentials,
        CircuitBreakers(storage, app[METRICS]),
        Budgets(storage, app[METRICS], config),
        ResponseCache(storage, app[METRICS]),
        letterbox,
        app[METRICS],
    )
    for vendor, policy in settings.policies.items():
        if policy.dead_letter:
            await letterbox.count(vendor)
    for provider in tokens.values():
        provider.start()
    yield
    await asyncio.gather(*(provider.stop() for provider in tokens.values()))
    await token_session.close()
    await clients.close()
    await storage.close()


@web.middleware
async def _count_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """gateway_errors_total: every answer that carries an error of ours, whichever handler made it."""
    response = await handler(request)
    made = response.get(GATEWAY_ERROR)
    if made is not None:
        request.app[METRICS].errors.labels(made.vendor or "unknown", made.type).inc()
    return response


@web.middleware
async def _origin_form_only(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    # An absolute-form (GET http://elsewhere/ HTTP/1.1) or authority-form (CONNECT host:443)
    # target asks for a forward proxy; the router would not even reach the proxy with CONNECT's.
    if request.method == "CONNECT":
        return problem_response(MethodNotAllowed("CONNECT is not forwarded"), request_id(request))
    if not request.raw_path.startswith("/"):
        err = BadRequest("absolute-form and authority-form request targets are not accepted")
        return problem_response(err, request_id(request))
    return await handler(request)


async def proxy(request: web.Request) -> web.StreamResponse:
    return await request.app[PIPELINE].handle(request)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    storage = request.app[STORAGE]
    body: dict[str, object] = {"policies": len(request.app[SETTINGS].policies), "storage": storage.name}
    if request.app[DRAINING]:
        return web.json_response({**body, "status": "draining"}, status=503)
    try:
        await storage.ping()
    except StorageError as exc:
        fallback = request.app[SETTINGS].config.on_storage_error
        if fallback == "reject":
            return web.json_response({**body, "status": "unready", "detail": str(exc)}, status=503)
        # The gateway still serves: budgets follow on_storage_error until storage answers.
        return web.json_response({**body, "status": "ready", "fallback": fallback, "detail": str(exc)}, status=200)
    request.app[PIPELINE].budgets.storage_answers()
    return web.json_response({**body, "status": "ready"}, status=200)


async def metrics(request: web.Request) -> web.Response:
    return web.Response(
        body=request.app[METRICS].render(),
        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
    )


async def status(request: web.Request) -> web.Response:
    """Per vendor: upstream, credential state (never a secret), breaker state and budgets."""
    settings = request.app[SETTINGS]
    tokens = request.app[TOKENS]
    pipeline = request.app[PIPELINE]
    breakers = pipeline.breakers
    vendors: dict[str, dict[str, object]] = {}
    for vendor, policy in sorted(settings.policies.items()):
        credentials = tokens[vendor].status() if vendor in tokens else {"type": policy.credentials.type, "state": "static"}
        breaker = policy.circuit_breaker
        vendors[vendor] = {
            "upstream": policy.upstream.url,
            "credentials": credentials,
            "circuit_breaker": await breakers.state(vendor, breaker) if breaker is not None else None,
            "budgets": await pipeline.budgets.status(policy, settings.config.callers),
        }
    return web.json_response({"vendors": vendors}, status=200)
