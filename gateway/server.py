"""The aiohttp handlers: the proxy route, health, readiness, metrics and status, the
middlewares every answer passes, and the runner whose connections keep the head deadline.

Handlers reach what they need through the typed app keys of gateway.state; gateway.app
builds the application and fills them.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any, cast

from aiohttp import web
from aiohttp.hdrs import EXPECT
from aiohttp.web_urldispatcher import DynamicResource, UrlMappingMatchInfo

from gateway.answers import marked, problem_response
from gateway.connections import CallerServer
from gateway.errors import BadRequest, GatewayError, MethodNotAllowed, StorageError
from gateway.request import request_id
from gateway.core.auth_stop import REJECTED
from gateway.metrics import Metrics
from gateway.reload import Live
from gateway.state import AUTH_STOPS, BREAKERS, BUDGETS, DRAINING, LIVE, METRICS, STATS, STORAGE


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
        handler = edge(made.request_handler, metrics, self.app[LIVE], routed_segments(self.app))
        return CallerServer(made, header_timeout=self._header_timeout, refused=refused, handler=handler)


Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]

# A target whose first segment is a vendor name as sent (no percent-encoding, so the
# router's decoded path begins with the same segment).
_VENDOR_FIRST = re.compile(r"/([a-z0-9][a-z0-9_-]*)(?:[/?]|$)")


def routed_segments(app: web.Application) -> frozenset[str] | None:
    """The first path segments of the app's routes other than the proxy's; None when the
    app's handler does more than route (middlewares, on_response_prepare receivers) or a
    route's first segment is not plain text, so that every request must go through it."""
    if app.middlewares or app.on_response_prepare:
        return None
    segments = set()
    for resource in app.router.resources():
        if isinstance(resource, ProxyRoute):
            continue
        segment = resource.canonical[1:].partition("/")[0]
        if not resource.canonical.startswith("/") or "{" in segment:
            return None
        segments.add(segment)
    return frozenset(segments)


def edge(app_handler: Handler, metrics: Metrics, live: Live, routed: frozenset[str] | None) -> Handler:
    """What every answer passes, around the app's handler (no middleware: aiohttp would
    add two layers to every request for one): a target that asks for a forward proxy is
    refused; gateway_errors_total counts every answer that carries an error of ours,
    whichever handler made it.

    A request the router could only give to the proxy's route goes straight to the
    pipeline of ``live``, without the app's handler (its routing, match info and Expect
    step: some 20,000 instructions per request): its first segment is a vendor name as
    sent and none of the ``routed`` first segments of the other routes, and it has no
    Expect header (the app's handler answers 100-continue). ``routed`` None: every
    request goes through the app's handler."""

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        # An absolute-form (GET http://elsewhere/ HTTP/1.1) or authority-form (CONNECT
        # host:443) target asks for a forward proxy; it is refused before routing.
        response: web.StreamResponse
        raw_path = request.raw_path
        if request.method == "CONNECT":
            response = problem_response(MethodNotAllowed("CONNECT is not forwarded"), request_id(request))
        elif not raw_path.startswith("/"):
            err = BadRequest("absolute-form and authority-form request targets are not accepted")
            response = problem_response(err, request_id(request))
        elif (routed is not None and (first := _VENDOR_FIRST.match(raw_path)) is not None
              and first[1] not in routed and EXPECT not in request.headers):
            # Made by the app's request factory: a web.Request, with no match info (the
            # pipeline reads none, nor request.app).
            response = await live.current.pipeline.handle(cast(web.Request, request))
        else:
            response = await app_handler(request)
        made = marked(response)
        if made is not None:
            metrics.errors.labels(made.vendor or "unknown", made.type).inc()
        return response

    return handle


class ProxyRoute(DynamicResource):
    """The proxy's route: every path the other routes do not take (``/{tail}``, tail any
    text, found last). Its pattern matches whatever reaches it, so it is not matched: no
    regular expression, no decoded tail per request (the proxy reads the raw path)."""

    def __init__(self) -> None:
        # [\s\S]: the router matches decoded paths, and "." would stop at a decoded newline.
        super().__init__(r"/{tail:[\s\S]*}")

    async def resolve(self, request: web.Request) -> tuple[UrlMappingMatchInfo | None, set[str]]:
        route = self._any_route
        assert route is not None  # added by build_app
        return UrlMappingMatchInfo(_NO_PARTS, route), self._allowed_methods


_NO_PARTS: dict[str, str] = {}  # copied by every match


async def proxy(request: web.Request) -> web.StreamResponse:
    # The snapshot is taken once: a reload while this request runs does not change its way.
    return await request.app[LIVE].current.pipeline.handle(request)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    storage = request.app[STORAGE]
    settings = request.app[LIVE].current.settings
    body: dict[str, object] = {"policies": len(settings.policies), "storage": storage.name}
    if request.app[DRAINING]:
        return web.json_response({**body, "status": "draining"}, status=503)
    try:
        await storage.ping()
    except StorageError as exc:
        fallback = settings.config.on_storage_error
        if fallback == "reject":
            return web.json_response({**body, "status": "unready", "detail": str(exc)}, status=503)
        # The gateway still serves: budgets follow on_storage_error until storage answers.
        return web.json_response({**body, "status": "ready", "fallback": fallback, "detail": str(exc)}, status=200)
    request.app[BUDGETS].storage_answers()
    return web.json_response({**body, "status": "ready"}, status=200)


def _refreshed(request: web.Request) -> Metrics:
    request.app[AUTH_STOPS].refresh_gauges()
    return request.app[METRICS]


async def metrics(request: web.Request) -> web.Response:
    await request.app[LIVE].current.dead_letters.count_every()
    return web.Response(
        body=_refreshed(request).render(),
        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
    )


async def status(request: web.Request) -> web.Response:
    """Per vendor: upstream, credential state (never a secret), breaker state, budgets and
    the shared stats; when the config in force was loaded, and why the latest reload was
    refused. Storage failing, ``stats`` is null and ``stats_unavailable`` says why."""
    live = request.app[LIVE]
    snapshot = live.current
    settings = snapshot.settings
    tokens = snapshot.tokens
    breakers = request.app[BREAKERS]
    budgets = request.app[BUDGETS]
    auth_stops = request.app[AUTH_STOPS]
    vendors: dict[str, dict[str, object]] = {}
    body: dict[str, object] = {"vendors": vendors, "config": live.status()}
    try:
        stats = await request.app[STATS].read(sorted(settings.policies))
    except StorageError as exc:
        stats = {}
        body["stats_unavailable"] = str(exc)
    for vendor, policy in sorted(settings.policies.items()):
        credentials: dict[str, object] = (
            tokens[vendor].status() if vendor in tokens else {"type": policy.credentials.type, "state": "static"}
        )
        stop = await auth_stops.standing(policy)
        if stop.state == REJECTED:
            credentials.update(state="rejected", probing=stop.probing, next_probe_in=round(stop.retry_after, 3))
        breaker = policy.circuit_breaker
        vendors[vendor] = {
            "upstream": policy.upstream.url,
            "credentials": credentials,
            "circuit_breaker": await breakers.state(vendor, breaker) if breaker is not None else None,
            "budgets": await budgets.status(policy, settings.config.callers),
            "stats": stats.get(vendor),
        }
    return web.json_response(body, status=200)
