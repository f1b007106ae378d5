"""Who may read the gateway's own pages (``/_gateway/status``, ``/metrics``, the console):
with callers configured, whoever holds the admin key or a caller's key; with none
(listening on loopback, or ``allow_anonymous``), anyone who can reach the port."""

from __future__ import annotations

import hmac
import uuid
from collections.abc import Awaitable, Callable
from functools import wraps

from aiohttp import web

from gateway.answers import problem_response
from gateway.callers import digest, presented_key
from gateway.config.loader import Settings
from gateway.errors import Unauthenticated
from gateway.state import LIVE

Handler = Callable[[web.Request], Awaitable[web.Response]]
Refusal = Callable[[web.Request, Unauthenticated], Awaitable[web.Response]]


def check_reader(settings: Settings, request: web.Request) -> None:
    """Raise Unauthenticated unless the request may read (see the module)."""
    config = settings.config
    if not config.callers:
        return
    presented = request.headers.get("X-Gateway-Admin-Key") or presented_key(request.headers)
    if not presented:
        raise Unauthenticated("send the admin key or a caller key as X-Gateway-Key: KEY or Authorization: Bearer KEY")
    keys = [caller.key.reveal() for caller in config.callers]
    if config.admin_key is not None:
        keys.append(config.admin_key.reveal())
    presented_digest = digest(presented)
    # Against every key, so the time taken tells nothing about which one came close.
    found = False
    for key in keys:
        found |= hmac.compare_digest(presented_digest, digest(key))
    if not found:
        raise Unauthenticated("the key is not the admin key nor a caller's key")


async def _problem(request: web.Request, err: Unauthenticated) -> web.Response:
    return problem_response(err, uuid.uuid4().hex)


def readers_only(handler: Handler, refused: Refusal = _problem) -> Handler:
    """``handler`` for those who may read; the others get ``refused``'s answer (a 401 problem)."""

    @wraps(handler)
    async def checked(request: web.Request) -> web.Response:
        try:
            check_reader(request.app[LIVE].current.settings, request)
        except Unauthenticated as err:
            return await refused(request, err)
        return await handler(request)

    return checked
