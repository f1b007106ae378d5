"""The admin API: reload, and dead letters (list, get, replay, delete). Every call needs the
admin key (``X-Gateway-Admin-Key: KEY`` or ``Authorization: Bearer KEY``)."""

from __future__ import annotations

import hmac
import time
import uuid
from collections.abc import Awaitable, Callable
from functools import wraps

from aiohttp import web

from gateway.callers import bearer_token, digest
from gateway.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    GatewayError,
    InvalidConfig,
    NotFound,
    ServiceUnavailable,
    StorageError,
    Unauthenticated,
)
from gateway.answers import problem_response
from gateway.state import LIVE, RELOADER, STORAGE
from gateway.storage import DeadLetterStore

Handler = Callable[[web.Request], Awaitable[web.Response]]

MAX_PAGE = 500
REPLAY_CLAIM = 600.0  # seconds a replay holds its entry; longer than any replay's attempts


def _admin(handler: Handler) -> Handler:
    @wraps(handler)
    async def checked(request: web.Request) -> web.Response:
        try:
            expected = request.app[LIVE].current.settings.config.admin_key
            if expected is None:
                raise Forbidden("the admin API is off: configure admin_key to use it")
            presented = request.headers.get("X-Gateway-Admin-Key") or bearer_token(request.headers.get("Authorization", ""))
            if not presented or not hmac.compare_digest(digest(presented), digest(expected.reveal())):
                raise Unauthenticated("send the admin key as X-Gateway-Admin-Key: KEY")
            return await handler(request)
        except StorageError as exc:
            return problem_response(ServiceUnavailable(f"storage failed: {exc}"), uuid.uuid4().hex)
        except GatewayError as err:
            return problem_response(err, uuid.uuid4().hex)

    return checked


def _storage(request: web.Request) -> DeadLetterStore:
    return request.app[STORAGE]


@_admin
async def reload(request: web.Request) -> web.Response:
    """Read the config and every policy again: 200 with the vendors now served, or 422
    with every problem found (the old snapshot stays in force)."""
    problems = await request.app[RELOADER].reload()
    if problems:
        raise InvalidConfig(problems)
    return web.json_response({"vendors": sorted(request.app[LIVE].current.settings.policies)})


@_admin
async def list_dead_letters(request: web.Request) -> web.Response:
    vendor = request.query.get("vendor") or None
    after = request.query.get("after", "")
    try:
        limit = int(request.query.get("limit", "100"))
    except ValueError:
        raise BadRequest("limit must be a whole number") from None
    if not 1 <= limit <= MAX_PAGE:
        raise BadRequest(f"limit must be from 1 to {MAX_PAGE}")
    entries = await _storage(request).list_dead_letters(vendor, after, limit)
    return web.json_response({
        "dead_letters": [e.summary() for e in entries],
        "next": entries[-1].id if len(entries) == limit else None,
    })


@_admin
async def get_dead_letter(request: web.Request) -> web.Response:
    entry = await _storage(request).get_dead_letter(request.match_info["id"])
    if entry is None:
        raise NotFound(f"no dead letter {request.match_info['id']!r}")
    return web.json_response(entry.detail())


@_admin
async def delete_dead_letter(request: web.Request) -> web.Response:
    storage = _storage(request)
    entry = await storage.get_dead_letter(request.match_info["id"])
    if entry is None or not await storage.delete_dead_letter(entry.id):
        raise NotFound(f"no dead letter {request.match_info['id']!r}")
    await request.app[LIVE].current.dead_letters.count(entry.vendor)
    return web.Response(status=204)


@_admin
async def replay_dead_letter(request: web.Request) -> web.Response:
    """Send it again through the normal attempts (today's credentials, breaker, retries):
    removed when it succeeds, updated when it fails again."""
    storage = _storage(request)
    pipeline = request.app[LIVE].current.pipeline
    entry = await storage.get_dead_letter(request.match_info["id"])
    if entry is None:
        raise NotFound(f"no dead letter {request.match_info['id']!r}")
    if entry.body is None and entry.method in ("POST", "PUT", "PATCH"):
        raise BadRequest("this entry's body was streamed (over 1 MiB) and not kept: it cannot be replayed")
    if not await storage.claim_dead_letter(entry.id, REPLAY_CLAIM):
        raise Conflict(f"dead letter {entry.id!r} is being replayed already")
    try:
        delivery = await pipeline.replay(entry)
        result = {"id": entry.id, "status": delivery.status, "attempts": delivery.attempts}
        if delivery.status < 400:
            await storage.delete_dead_letter(entry.id)
            await request.app[LIVE].current.dead_letters.count(entry.vendor)
            return web.json_response({**result, "outcome": "delivered"})
        again = entry.failed_again(delivery.status, delivery.error, delivery.attempts, time.time())
        await storage.update_dead_letter(again)
        return web.json_response({**result, "outcome": "failed", "error": delivery.error})
    finally:
        await storage.release_dead_letter(entry.id)
