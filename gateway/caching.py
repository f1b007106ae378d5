"""Step 3 (and the cache's half of step 5) for a cacheable request: a fresh stored answer
goes out at once, with no budget taken; identical misses wait for one fetch (within the
process through a flight, across processes through a short fetch lock); the fetch stores
a cacheable answer and shares it; when every attempt fails, a stale stored answer
(stale_if_error) goes out instead. What to do next is decided by the pure states of
gateway.core.cache (``CacheStates``), which this module drives; gateway.cache reads,
stores and coalesces.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from gateway.answers import broke_off, stored_answer, stream, vendor_headers
from gateway.cache import FetchLock, FetchShared, Flight, Lookup, ResponseCache
from gateway.config.model import Policy
from gateway.core.cache import CacheStates, Entry, Label, Shared, Step, entry_for, storable
from gateway.deadletters import DeadLetters, should_keep
from gateway.errors import CallerGone, GatewayError
from gateway.request import RequestContext, UpstreamRequest
from gateway.taps import Copy
from gateway.upstream import AnswerBroke

log = logging.getLogger("gateway.pipeline")

Send = Callable[[RequestContext, Policy, UpstreamRequest], Awaitable[aiohttp.ClientResponse]]


@dataclass
class Waiters:
    """Those waiting for one fetch's answer: identical requests in this process (the
    flight) and in others (the fetch lock, let go at once when nothing is shared)."""

    flight: Flight | None = None
    lock: FetchLock | None = None

    async def share(self, shared: FetchShared) -> None:
        if self.flight is not None:
            self.flight.share(shared)
        if self.lock is not None and shared.nothing:
            await self.lock.release()


class Caching:
    def __init__(self, cache: ResponseCache, dead_letters: DeadLetters, send: Send) -> None:
        self._cache = cache
        self._dead_letters = dead_letters
        self._send = send

    async def answer(
        self, ctx: RequestContext, request: web.Request, policy: Policy, out: UpstreamRequest, lookup: Lookup
    ) -> web.StreamResponse:
        """A fresh stored answer, or one fetch shared by identical misses."""
        stored = await self._cache.read(lookup)  # on a bypass only the generations, for the store
        states = CacheStates(stored, time.time(), lookup.bypass)
        step = states.start
        if step is Step.HIT and stored is not None:
            return self._serve(ctx, request, stored, Label.HIT)
        ctx.cache = states.label.value
        if step is Step.FETCH:
            return await self._fetch(ctx, request, policy, out, lookup, states, Waiters())
        async with self._cache.flight(lookup) as flight:
            if not flight.leading:
                # Shielded: a follower whose caller leaves must not cancel the others' wait.
                shared = await asyncio.shield(flight.answer)
                step = states.after_following(shared, lookup.headers)
                if step is Step.FAIL and shared.failure is not None:
                    raise copy.copy(shared.failure)
                if step is Step.STALE and states.stale is not None:
                    return self._serve(ctx, request, states.stale, Label.STALE)
                if step is Step.HIT and shared.entry is not None:
                    return self._serve(ctx, request, shared.entry, shared.label)
                return await self._fetch(ctx, request, policy, out, lookup, states, Waiters())
            async with self._cache.fetch_lock(lookup, fetch_time(policy)) as lock:
                if lock.entry is not None:
                    flight.share(Shared(lock.entry))
                    return stored_answer(ctx, request, lock.entry)
                return await self._fetch(ctx, request, policy, out, lookup, states, Waiters(flight, lock))

    async def _fetch(
        self, ctx: RequestContext, request: web.Request, policy: Policy, out: UpstreamRequest, lookup: Lookup,
        states: CacheStates, waiters: Waiters,
    ) -> web.StreamResponse:
        """Ask the vendor; store a cacheable answer and share it with those waiting for it.
        When every attempt fails, a stale stored answer (stale_if_error) goes out instead."""
        stale = states.stale
        try:
            upstream = await self._send(ctx, policy, out)
        except GatewayError as err:
            # A caller that left failed only its own request: the others fetch for themselves.
            await waiters.share(Shared() if isinstance(err, CallerGone) else Shared(failure=err))
            if states.after_failure(err.status) is Step.STALE and stale is not None:
                return self._serve_stale(ctx, request, policy, stale)
            raise
        limit = lookup.rule.max_size
        too_large = upstream.content_length is not None and upstream.content_length > limit
        kept = should_keep(policy, out.method, upstream.status, "answered")
        step = states.after_answer(upstream.status, too_large, kept)
        if step is Step.STALE and stale is not None:
            upstream.close()
            await waiters.share(Shared(stale, Label.STALE))
            return self._serve_stale(ctx, request, policy, stale)
        if step is Step.PASS:
            await waiters.share(Shared())
            tap = self._dead_letters.tap(ctx, policy, out, upstream.status)
            return await stream(ctx, request, policy, upstream, tap)

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
            await waiters.share(Shared(entry))

        async def broke(cut: AnswerBroke) -> None:
            await self._dead_letters.broke_off(ctx, policy, out, upstream.status, cut)
            failed: FetchShared = Shared(failure=broke_off(ctx.vendor, cut))
            await waiters.share(Shared(stale, Label.STALE) if stale is not None else failed)

        return await stream(ctx, request, policy, upstream, Copy(broke, limit, store, lambda: waiters.share(Shared())))

    @staticmethod
    def _serve(ctx: RequestContext, request: web.Request, entry: Entry, label: Label) -> web.Response:
        ctx.cache = label.value
        return stored_answer(ctx, request, entry)

    @classmethod
    def _serve_stale(cls, ctx: RequestContext, request: web.Request, policy: Policy, stale: Entry) -> web.Response:
        log.warning("%s: every attempt failed; serving a stale stored answer", policy.vendor,
                    extra={"request_id": ctx.request_id})
        return cls._serve(ctx, request, stale, Label.STALE)


def fetch_time(policy: Policy) -> float:
    """The longest one fetch can take: every attempt, the backoffs between them and a
    budget wait before each (how long other processes wait for its answer)."""
    retry = policy.retry
    return retry.attempts * (policy.timeout + policy.when_exhausted.wait) + (retry.attempts - 1) * retry.backoff.max
