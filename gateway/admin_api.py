"""The admin API: reload, and dead letters (list filtered by vendor, status and time, get,
replay one or all that match, delete). Every call needs the admin key
(``X-Gateway-Admin-Key: KEY`` or ``Authorization: Bearer KEY``)."""

from __future__ import annotations

import asyncio
import hmac
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import wraps

import orjson

from aiohttp import web

from gateway.callers import bearer_token, digest
from gateway.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    GatewayError,
    InvalidConfig,
    NotFound,
    StorageError,
    StorageUnavailable,
    Unauthenticated,
)
from gateway.answers import problem_response
from gateway.core.dead_letter import DeadLetter
from gateway.state import LIVE, RELOADER, STORAGE
from gateway.storage import DeadLetterStore

BULK_REPLAY = web.AppKey("bulk_replay", asyncio.Lock)  # held while a bulk replay runs in this process

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
            return problem_response(StorageUnavailable(f"storage failed: {exc}"), uuid.uuid4().hex)
        except GatewayError as err:
            return problem_response(err, uuid.uuid4().hex)

    return checked


def _storage(request: web.Request) -> DeadLetterStore:
    return request.app[STORAGE]


@dataclass(frozen=True)
class Match:
    """Which dead letters a list or bulk replay takes: every given part must hold."""

    vendor: str | None = None
    status: int | None = None
    since: float | None = None
    ids: frozenset[str] | None = None

    def takes(self, entry: DeadLetter) -> bool:
        return ((self.status is None or entry.status == self.status)
                and (self.since is None or entry.last_at >= self.since)
                and (self.ids is None or entry.id in self.ids))


def _status(value: object) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 100 <= value <= 599:
        raise BadRequest("status must be an HTTP status, a number from 100 to 599")
    return value


def _since(value: object) -> float | None:
    if value is None or value == "":
        return None
    try:
        if not isinstance(value, str):
            raise ValueError
        at = datetime.fromisoformat(value)
    except ValueError:
        raise BadRequest("since must be an ISO 8601 time, such as 2024-05-01T08:00:00Z") from None
    return (at if at.tzinfo else at.replace(tzinfo=timezone.utc)).timestamp()


def _vendor(value: object) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise BadRequest("vendor must be a vendor's name")
    return value


def _ids(value: object) -> frozenset[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(i, str) for i in value):
        raise BadRequest("ids must be a list of dead letter ids")
    return frozenset(value)


def _match(given: Mapping[str, object]) -> Match:
    return Match(_vendor(given.get("vendor")), _status(given.get("status")), _since(given.get("since")),
                 _ids(given.get("ids")))


async def _matching(storage: DeadLetterStore, match: Match, after: str = "") -> AsyncIterator[DeadLetter]:
    """The entries ``match`` takes, oldest first (ids sort by the time they were kept)."""
    while True:
        page = await storage.list_dead_letters(match.vendor, after, MAX_PAGE)
        for entry in page:
            if match.takes(entry):
                yield entry
        if len(page) < MAX_PAGE:
            return
        after = page[-1].id


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
    match = _match(request.query)
    after = request.query.get("after", "")
    try:
        limit = int(request.query.get("limit", "100"))
    except ValueError:
        raise BadRequest("limit must be a whole number") from None
    if not 1 <= limit <= MAX_PAGE:
        raise BadRequest(f"limit must be from 1 to {MAX_PAGE}")
    entries: list[DeadLetter] = []
    async for entry in _matching(_storage(request), match, after):
        entries.append(entry)
        if len(entries) == limit:
            break
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


async def _replay(app: web.Application, entry: DeadLetter) -> dict[str, object]:
    """Send it again through the normal attempts (today's credentials, breaker, budgets,
    retries): removed when it succeeds, updated when it fails again."""
    storage = app[STORAGE]
    if not await storage.claim_dead_letter(entry.id, REPLAY_CLAIM):
        raise Conflict(f"dead letter {entry.id!r} is being replayed already")
    try:
        delivery = await app[LIVE].current.pipeline.replay(entry)
        result: dict[str, object] = {"id": entry.id, "status": delivery.status, "attempts": delivery.attempts}
        if delivery.status < 400:
            await storage.delete_dead_letter(entry.id)
            await app[LIVE].current.dead_letters.count(entry.vendor)
            return {**result, "outcome": "delivered"}
        again = entry.failed_again(delivery.status, delivery.error, delivery.attempts, time.time())
        await storage.update_dead_letter(again)
        return {**result, "outcome": "failed", "error": delivery.error}
    finally:
        await storage.release_dead_letter(entry.id)


def _replayable(entry: DeadLetter) -> bool:
    return entry.body is not None or entry.method not in ("POST", "PUT", "PATCH")


@_admin
async def replay_dead_letter(request: web.Request) -> web.Response:
    entry = await _storage(request).get_dead_letter(request.match_info["id"])
    if entry is None:
        raise NotFound(f"no dead letter {request.match_info['id']!r}")
    if not _replayable(entry):
        raise BadRequest("this entry's body was streamed (over 1 MiB) and not kept: it cannot be replayed")
    return web.json_response(await _replay(request.app, entry))


@_admin
async def replay_dead_letters(request: web.Request) -> web.Response:
    """Replay every dead letter the body's filter takes, oldest first, one after another;
    one bulk replay at a time. Entries another replay holds are left to it."""
    raw = await request.read()
    try:
        given = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError:
        raise BadRequest("the body must be a JSON object: {\"vendor\", \"status\", \"since\", \"ids\"}") from None
    if not isinstance(given, dict):
        raise BadRequest("the body must be a JSON object: {\"vendor\", \"status\", \"since\", \"ids\"}")
    match = _match(given)
    lock = request.app[BULK_REPLAY]
    if lock.locked():
        raise Conflict("another bulk replay is running: try again when it is done")
    async with lock:
        entries = [entry async for entry in _matching(_storage(request), match)]
        delivered = failed = 0
        for entry in entries:
            if not _replayable(entry):
                failed += 1
                continue
            try:
                result = await _replay(request.app, entry)
            except Conflict:
                continue
            except GatewayError:  # its vendor is no longer configured
                failed += 1
                continue
            if result["outcome"] == "delivered":
                delivered += 1
            else:
                failed += 1
    return web.json_response({"delivered": delivered, "failed": failed})
