"""Step 3 (and the cache's half of step 5) for a cacheable request: a fresh stored answer
goes out at once, with no budget taken; identical misses wait for one fetch (within the
process through a flight, across processes through a short fetch lock); the fetch stores
a cacheable answer and shares it; when every attempt fails, a stale stored answer
(stale_if_error) goes out instead. gateway.cache reads and stores; the freshness and
storability rules are gateway.core.cache's.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web

from gateway.answers import broke_off, stored_answer, stream, vendor_headers
from gateway.cache import FetchLock, Flight, Lookup, ResponseCache, Shared
from gateway.config.model import Policy
from gateway.core.cache import Entry, entry_for, storable
from gateway.deadletters import DeadLetters, should_keep
from gateway.errors import CallerGone, GatewayError
from gateway.request import RequestContext, UpstreamRequest
from gateway.taps import Copy
from gateway.upstream import AnswerBroke

log = logging.getLogger("gateway.pipeline")

Send = Callable[[RequestContext, Policy, UpstreamRequest], Awaitable[aiohttp.ClientResponse]]

# Gateway errors after which a stale stored answer is served instead (stale_if_error).
_STALE_ON = frozenset({502, 503, 504})


class Caching:
    def __init__(self, cache: ResponseCache, dead_letters: DeadLetters, send: Send) -> None:
        self._cache = cache
        self._dead_letters = dead_letters
        self._send = send

    async def answer(
        self, ctx: RequestContext, request: web.Request, policy: Policy, out: UpstreamRequest, lookup: Lookup
    ) -> web.StreamResponse:
        """A fresh stored answer, or one fetch shared by identical misses."""
        now = time.time()
        stored = await self._cache.read(lookup)  # on a bypass only the generations, for the store
        if stored is not None and stored.fresh(now):
            ctx.cache = "HIT"
            return stored_answer(ctx, request, stored)
        ctx.cache = "BYPASS" if lookup.bypass else "MISS"
        stale = stored if stored is not None and stored.usable_stale(now) else None
        if lookup.bypass:
            return await self._fetch(ctx, request, policy, out, lookup, stale)
        async with self._cache.flight(lookup) as flight:
            if not flight.leading:
                # Shielded: a follower whose caller leaves must not cancel the others' wait.
                shared = await asyncio.shield(flight.answer)
                if isinstance(shared, GatewayError):
                    if stale is None or shared.status not in _STALE_ON:
                        raise copy.copy(shared)
                    shared = ("STALE", stale)
                if shared is not None and shared[1].matches(lookup.headers):
                    ctx.cache = shared[0]
                    return stored_answer(ctx, request, shared[1])
                return await self._fetch(ctx, request, policy, out, lookup, stale)
            async with self._cache.fetch_lock(lookup, fetch_time(policy)) as lock:
                if lock.entry is not None:
                    flight.share(("MISS", lock.entry))
                    return stored_answer(ctx, request, lock.entry)
                return await self._fetch(ctx, request, policy, out, lookup, stale, flight, lock)

    async def _fetch(
        self, ctx: RequestContext, request: web.Request, policy: Policy, out: UpstreamRequest, lookup: Lookup,
        stale: Entry | None, flight: Flight | None = None, lock: FetchLock | None = None,
    ) -> web.StreamResponse:
        """Ask the vendor; store a cacheable answer and share it with those waiting for it.
        When every attempt fails, a stale stored answer (stale_if_error) goes out instead."""

        async def share(shared: Shared) -> None:
            if flight is not None:
                flight.share(shared)
            if lock is not None and shared is None:
                await lock.release()

        try:
            upstream = await self._send(ctx, policy, out)
        except GatewayError as err:
            await share(None if isinstance(err, CallerGone) else err)  # the others are still there
            if stale is not None and err.status in _STALE_ON:
                return self._serve_stale(ctx, request, policy, stale)
            raise
        if stale is not None and upstream.status >= 500:
            upstream.close()
            await share(("STALE", stale))
            return self._serve_stale(ctx, request, policy, stale)
        limit = lookup.rule.max_size
        too_large = upstream.content_length is not None and upstream.content_length > limit
        if too_large or should_keep(policy, out.method, upstream.status, "answered"):
            # A failed write is not stored; an answer too large to keep is streamed.
            await share(None)
            return await stream(ctx, request, policy, upstream, self._dead_letters.tap(ctx, policy, out, upstream.status))

        async def store(body: bytes) -> None:
            vary = upstream.headers.getall("Vary", [])
            entry = entry_for(
                upstream.status, upstream.reason or "", list(vendor_headers(policy, upstream).items()), body,
                lookup.headers, vary, time.time(), lookup.rule.ttl, lookup.rule.stale_if_error,
            )
            if storable(upstream.status, upstream.headers.getall("Cache-Control", []), vary):
                await self._cache.store(lookup, entry)
            # Those waiting get this answer whether or not it is stored: it is the vendor's
            # answer to the same request at the same moment.
            await share(("MISS", entry))

        async def broke(cut: AnswerBroke) -> None:
            await self._dead_letters.broke_off(ctx, policy, out, upstream.status, cut)
            await share(("STALE", stale) if stale is not None else broke_off(ctx.vendor, cut))

        return await stream(ctx, request, policy, upstream, Copy(broke, limit, store, lambda: share(None)))

    @staticmethod
    def _serve_stale(ctx: RequestContext, request: web.Request, policy: Policy, stale: Entry) -> web.Response:
        log.warning("%s: every attempt failed; serving a stale stored answer", policy.vendor,
                    extra={"request_id": ctx.request_id})
        ctx.cache = "STALE"
        return stored_answer(ctx, request, stale)


def fetch_time(policy: Policy) -> float:
    """The longest one fetch can take: every attempt, the backoffs between them and a
    budget wait before each (how long other processes wait for its answer)."""
    retry = policy.retry
    return retry.attempts * (policy.timeout + policy.when_exhausted.wait) + (retry.attempts - 1) * retry.backoff.max
