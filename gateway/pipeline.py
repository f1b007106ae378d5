"""One proxied request's way through the gateway (DESIGN.md, "The request's way").

1. route      vendor from the first path segment; the rest checked; URL from the policy
2. caller     who is calling, may they use this vendor
3. cache      a fresh stored answer goes out at once, no budget taken; identical misses
              wait for one fetch (gateway.caching)
4. attempts   per attempt: budget, breaker, credential, send, classify, back off
              (gateway.attempts)
5. store      keep a cacheable answer (gateway.caching); keep a failed write as a dead
              letter (gateway.deadletters)
6. answer     stream the vendor's answer with our headers added, as its bytes arrive
              (gateway.answers)

Cheap steps come first, so what costs money (budget, upstream calls) is spent last. What
the request carries between the steps is a gateway.request.RequestContext.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from gateway.answers import GATEWAY_ERROR, marked, problem, problem_response, stream
from gateway.attempts import Attempts
from gateway.body import RequestBody, read_body
from gateway.budget_headers import max_wait
from gateway.cache import ResponseCache
from gateway.caching import Caching
from gateway.callers import CallerDirectory
from gateway.config.loader import Settings
from gateway.config.model import HTTP_METHODS, Policy
from gateway.core.dead_letter import DeadLetter
from gateway.core.notices import AnswerCounts
from gateway.core.routing import Target
from gateway.deadletters import ERROR_EXCERPT, DeadLetters, Delivery, describe
from gateway.errors import CallerGone, GatewayError, UnknownVendor
from gateway.metrics import Metrics
from gateway.request import (REQUEST_CONTEXT, RequestContext, UpstreamRequest, forward_headers, new_request_id,
                             refuse_method, request_id, route)
from gateway.stats import Stats
from gateway.upstream import AnswerBroke, read_answer

log = logging.getLogger("gateway.pipeline")


class Pipeline:
    def __init__(
        self, settings: Settings, attempts: Attempts, cache: ResponseCache, dead_letters: DeadLetters, metrics: Metrics,
        answers: AnswerCounts, stats: Stats,
    ) -> None:
        self.policies: Mapping[str, Policy] = settings.policies
        self.max_body = settings.config.max_body
        self.body_stall = settings.config.header_timeout
        self.callers = CallerDirectory(settings.config.callers)
        self.attempts = attempts
        self._cache = cache
        self._caching = Caching(cache, dead_letters, self.send)
        self._dead_letters = dead_letters
        self._metrics = metrics
        self.answers = answers  # shared by every snapshot: the success rates outlive a reload
        self._stats = stats  # shared too

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """The request's answer, counted once for the metrics however it ends."""
        # Whether the caller left, asked of the connection and not of the request: the request
        # keeps the context, and a context that kept the request would make every request a
        # reference cycle, freed only by the cyclic collector (a tenth of the CPU at full load).
        connection = request.protocol
        ctx = RequestContext(request_id(request), time.monotonic(),
                             lambda: connection.transport is None or connection.transport.is_closing())
        request[REQUEST_CONTEXT] = ctx
        status = 500
        made: GatewayError | None = None
        try:
            response = await self.respond(ctx, request)
            made = marked(response)
            if isinstance(made, CallerGone):
                ctx.left = True
            elif ctx.left:
                made = response[GATEWAY_ERROR] = CallerGone("the caller left during the answer", vendor=ctx.vendor)
            elif not response.prepared and ctx.gone():
                # Nobody will read this answer: what the request came to is the caller's leaving.
                ctx.left = True
                what = f"{made.type} problem" if made is not None else f"{response.status} answer"
                made = CallerGone(f"the caller left before its {what} went out")
                response = problem(ctx, made)
            if ctx.left and made is not None:
                log.info("%s %s: %s", ctx.vendor, request.method, made.detail, extra={"request_id": ctx.request_id})
            status = CallerGone.status if ctx.left else response.status
            return response
        except asyncio.CancelledError:
            # aiohttp cancels the handler of a caller that left when run with
            # handler_cancellation (its test server does), and at the end of a drain.
            status = CallerGone.status
            self._metrics.errors.labels(ctx.vendor, CallerGone.type).inc()
            log.info("%s %s: request cancelled: the caller left or the gateway stopped", ctx.vendor,
                     request.method, extra={"request_id": ctx.request_id})
            raise
        finally:
            method = request.method if request.method in HTTP_METHODS else "OTHER"
            self._metrics.requests_of(ctx.vendor, method, str(status), ctx.caller).inc()
            if ctx.vendor != "unknown":
                took, now = time.monotonic() - ctx.started, time.time()
                self._metrics.request_duration_of(ctx.vendor).observe(took)
                self._stats.record(ctx.vendor, status, made is not None, took, now)
                self.answers.answered(ctx.vendor, status < 400, now)
                if status < 400:
                    self._metrics.last_success_of(ctx.vendor).set(now)
            if ctx.cache is not None:
                self._cache.count(ctx.vendor, ctx.cache.lower())

    async def respond(self, ctx: RequestContext, request: web.Request) -> web.StreamResponse:
        """The steps; what goes wrong on the way is answered as a problem."""
        try:
            policy, target = route(self.policies, request.raw_path)                      # 1. route
            ctx.vendor = policy.vendor
            refuse_method(request.method, policy.vendor)
            ctx.who = self.callers.identify(request.headers)                             # 2. caller
            ctx.caller = ctx.who.name
            self.callers.authorize(ctx.who, policy.vendor)
            ctx.max_wait = max_wait(policy, request.headers.get("X-Gateway-Max-Wait"))
            body = await read_body(request, self.max_body, self.body_stall)
            out = UpstreamRequest(request.method, target, forward_headers(request, ctx.request_id, body), body)
            lookup = (
                self._cache.lookup(policy, out.method, target.path, target.query, out.headers, body.data)
                if policy.cache and body.replayable
                else None
            )
            if lookup is not None:                                                       # 3. cache
                return await self._caching.answer(ctx, request, policy, out, lookup)
            upstream = await self.send(ctx, policy, out)                                 # 4. attempts
            if policy.cache:  # no rules, nothing a write could outdate
                await self._cache.written(policy, out.method, target.path, upstream.status, ctx.request_id)
            tap = self._dead_letters.tap(ctx, policy, out, upstream.status)              # 5. store
            return await stream(ctx, request, policy, upstream, tap)                     # 6. answer
        except GatewayError as err:
            return problem(ctx, err)
        except Exception:
            # A bug of ours must still answer in the contract's shape, and say where to look.
            log.exception("unexpected error", extra={"request_id": ctx.request_id})
            vendor = None if ctx.vendor == "unknown" else ctx.vendor
            internal = GatewayError(f"internal gateway error; the log has request id {ctx.request_id}", vendor=vendor)
            return problem_response(internal, ctx.request_id, ctx.attempts)

    async def send(self, ctx: RequestContext, policy: Policy, out: UpstreamRequest) -> aiohttp.ClientResponse:
        """The attempts; a write the gateway gives up on is kept as a dead letter."""
        try:
            return await self.attempts.send(ctx, policy, out)
        except GatewayError as err:
            await self._dead_letters.gave_up(ctx, policy, out, err)
            raise

    async def replay(self, entry: DeadLetter) -> Delivery:
        """Send a dead letter again through the attempts, with today's credentials."""
        policy = self.policies.get(entry.vendor)
        if policy is None:
            raise UnknownVendor(f"no vendor {entry.vendor!r} is configured any more")
        ctx = RequestContext(new_request_id(), time.monotonic(), vendor=entry.vendor, caller=entry.caller,
                             who=self.callers.named(entry.caller), max_wait=policy.when_exhausted.wait)
        headers = CIMultiDict(entry.headers)
        headers["X-Request-Id"] = ctx.request_id
        out = UpstreamRequest(entry.method, Target(entry.vendor, entry.path, entry.query), headers,
                              RequestBody(entry.body))
        try:
            upstream = await self.attempts.send(ctx, policy, out)
        except GatewayError as err:
            return Delivery(err.status, ctx.attempts, f"{err.type}: {err.detail}")
        await self._cache.written(policy, entry.method, entry.path, upstream.status, ctx.request_id)
        try:
            body = await read_answer(upstream, ERROR_EXCERPT, policy.timeout)
        except AnswerBroke as broke:
            return Delivery(upstream.status, ctx.attempts, f"upstream {upstream.status} ({broke})")
        finally:
            upstream.close()
        return Delivery(upstream.status, ctx.attempts, describe(upstream.status, body))
