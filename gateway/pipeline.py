"""One proxied request's way through the gateway (DESIGN.md, "The request's way").

1. route      vendor from the first path segment; the rest checked; URL from the policy
2. caller     who is calling, may they use this vendor
3. cache      a fresh stored answer goes out at once, no budget taken; identical misses
              wait for one fetch
4. attempts   per attempt: budget, breaker, credential, send, classify, back off
5. store      keep a cacheable answer; keep a failed write as a dead letter
6. answer     stream the vendor's answer with our headers added, as its bytes arrive

Cheap steps come first, so what costs money (budget, upstream calls) is spent last.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import logging
import random
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace

import aiohttp
import orjson
from aiohttp import web
from multidict import CIMultiDict

from gateway.body import RequestBody, read_body
from gateway.breakers import CircuitBreakers
from gateway.budgets import Budgets, Charged, max_wait
from gateway.cache import FetchLock, Flight, Lookup, ResponseCache, Shared
from gateway.callers import ANONYMOUS, CallerDirectory
from gateway.config.loader import Settings
from gateway.config.model import HTTP_METHODS, Caller, Policy
from gateway.core.attempts import Outcome, backoff_delay, should_retry
from gateway.core.breaker import is_failure
from gateway.core.cache import Entry, entry_for, storable
from gateway.core.headers import POINTERS, caller_only, hop_by_hop, into_gateway, parse_retry_after
from gateway.core.routing import Target, UnsafeTarget, parse_target, upstream_url
from gateway.credentials import CredentialProvider
from gateway.deadletters import ERROR_EXCERPT, KEPT_GATEWAY_STATUSES, WRITES, DeadLetter
from gateway.errors import (
    BadRequest,
    CallerGone,
    CircuitOpen,
    MethodNotAllowed,
    GatewayError,
    UnknownVendor,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.letterbox import DeadLetterBox
from gateway.metrics import Metrics
from gateway.taps import Copy, Excerpt, Tap
from gateway.upstream import AnswerBroke, AttemptFailed, UpstreamClients, arrived_whole, read_answer

log = logging.getLogger("gateway.pipeline")

# TRACE and TRACK would echo the injected credential back to the caller; CONNECT would tunnel.
REFUSED_METHODS = frozenset({"TRACE", "TRACK", "CONNECT"})

_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,200}")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_CHUNK = 64 * 1024
# The gateway's own error on an answer, for the metrics (gateway_errors_total): problems,
# and vendors' answers that broke off or that the caller left during.
GATEWAY_ERROR = web.ResponseKey("gateway_error", GatewayError)
# Gateway errors after which a stale stored answer is served instead (stale_if_error).
_STALE_ON = frozenset({502, 503, 504})


@dataclass
class Exchange:
    """What the pipeline knows about one request as it goes; labels start pessimistic."""

    request_id: str
    started: float
    started_at: float = field(default_factory=time.time)  # wall clock, for dead letters
    vendor: str = "unknown"
    caller: str = "unauthenticated"
    attempts: int = 0
    who: Caller = ANONYMOUS
    max_wait: float = 0.0  # seconds an attempt may wait for budget
    gone: Callable[[], bool] = lambda: False  # whether the caller has disconnected
    left: bool = False  # the caller left before the whole answer went out
    charged: Charged | None = None  # the budgets of the latest attempt
    cache: str | None = None  # X-Gateway-Cache on a cacheable route


@dataclass(frozen=True)
class Outgoing:
    """The request to send, as the vendor will see it less the credential (added per attempt)."""

    method: str
    target: Target
    headers: CIMultiDict[str]
    body: RequestBody

    @property
    def idempotency_key(self) -> bool:
        return "Idempotency-Key" in self.headers


@dataclass(frozen=True)
class Delivery:
    """How a replayed dead letter went."""

    status: int
    attempts: int
    error: str


class Pipeline:
    def __init__(
        self,
        settings: Settings,
        clients: UpstreamClients,
        credentials: Mapping[str, CredentialProvider],
        breakers: CircuitBreakers,
        budgets: Budgets,
        cache: ResponseCache,
        dead_letters: DeadLetterBox,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.policies: Mapping[str, Policy] = settings.policies
        self.max_body = settings.config.max_body
        self.body_stall = settings.config.header_timeout
        self.callers = CallerDirectory(settings.config.callers)
        self.credentials = credentials
        self.breakers = breakers
        self.budgets = budgets
        self.cache = cache
        self.dead_letters = dead_letters
        self.clients = clients
        self.metrics = metrics
        self.clock = clock
        self.sleep = sleep
        self.jitter = jitter

    async def handle(self, request: web.Request) -> web.StreamResponse:
        ex = Exchange(request_id=request_id(request), started=self.clock())
        ex.gone = lambda: request.transport is None or request.transport.is_closing()
        status = 500
        try:
            response = await self.respond(ex, request)
            made = response.get(GATEWAY_ERROR)
            if isinstance(made, CallerGone):
                ex.left = True
            elif ex.left:
                made = response[GATEWAY_ERROR] = CallerGone("the caller left during the answer", vendor=ex.vendor)
            elif not response.prepared and ex.gone():
                # Nobody will read this answer: what the request came to is the caller's leaving.
                ex.left = True
                what = f"{made.type} problem" if made is not None else f"{response.status} answer"
                made = CallerGone(f"the caller left before its {what} went out")
                response = self.problem(ex, made)
            if ex.left and made is not None:
                log.info("%s %s: %s", ex.vendor, request.method, made.detail, extra={"request_id": ex.request_id})
            status = CallerGone.status if ex.left else response.status
            return response
        except asyncio.CancelledError:
            # aiohttp cancels the handler of a caller that left when run with
            # handler_cancellation (its test server does), and at the end of a drain.
            status = CallerGone.status
            self.metrics.errors.labels(ex.vendor, CallerGone.type).inc()
            log.info("%s %s: request cancelled: the caller left or the gateway stopped", ex.vendor,
                     request.method, extra={"request_id": ex.request_id})
            raise
        finally:
            method = request.method if request.method in HTTP_METHODS else "OTHER"
            self.metrics.requests.labels(ex.vendor, method, str(status), ex.caller).inc()
            if ex.vendor != "unknown":
                self.metrics.request_duration.labels(ex.vendor).observe(self.clock() - ex.started)
            if ex.cache is not None:
                self.cache.count(ex.vendor, ex.cache.lower())

    async def respond(self, ex: Exchange, request: web.Request) -> web.StreamResponse:
        """The steps; what goes wrong on the way is answered as a problem."""
        try:
            policy, target = self.route(ex, request)
            ex.who = self.identify(ex, request, policy)
            ex.max_wait = max_wait(policy, request.headers.get("X-Gateway-Max-Wait"))
            body = await read_body(request, self.max_body, self.body_stall)
            out = Outgoing(request.method, target, forward_headers(request, ex.request_id, body), body)
            lookup = (
                self.cache.lookup(policy, out.method, target.path, target.query, out.headers, body.data)
                if policy.cache and body.replayable
                else None
            )
            if lookup is not None:
                return await self.cached(ex, request, policy, out, lookup)
            upstream = await self.send(ex, policy, out)
            await self.cache.written(policy, out.method, target.path, upstream.status, ex.request_id)
            if self.keeps(policy, out, upstream.status, by_gateway=False):
                return await self.answer_and_keep(ex, request, policy, out, upstream)
            return await self.answer(ex, request, policy, out, upstream)
        except GatewayError as err:
            return self.problem(ex, err)
        except Exception:
            # A bug of ours must still answer in the contract's shape, and say where to look.
            log.exception("unexpected error", extra={"request_id": ex.request_id})
            vendor = None if ex.vendor == "unknown" else ex.vendor
            internal = GatewayError(f"internal gateway error; the log has request id {ex.request_id}", vendor=vendor)
            return problem_response(internal, ex.request_id, ex.attempts)

    @staticmethod
    def problem(ex: Exchange, err: GatewayError) -> web.Response:
        if err.vendor is None and ex.vendor != "unknown":
            err.vendor = ex.vendor
        problem = problem_response(err, ex.request_id, ex.attempts)
        if ex.cache is not None:
            problem.headers["X-Gateway-Cache"] = ex.cache
        return problem

    async def send(self, ex: Exchange, policy: Policy, out: Outgoing) -> aiohttp.ClientResponse:
        """The attempts; a write the gateway gives up on is kept as a dead letter."""
        try:
            return await self.attempts(ex, policy, out)
        except GatewayError as err:
            if self.keeps(policy, out, err.status, by_gateway=True):
                await self.dead_letters.keep(ex, out, err.status, f"{err.type}: {err.detail}")
            raise

    async def cached(
        self, ex: Exchange, request: web.Request, policy: Policy, out: Outgoing, lookup: Lookup
    ) -> web.StreamResponse:
        """A cacheable request: a fresh stored answer, or one fetch shared by identical misses."""
        now = time.time()
        stored = await self.cache.read(lookup)  # on a bypass only the generations, for the store
        if stored is not None and stored.fresh(now):
            ex.cache = "HIT"
            return self.stored_answer(ex, request, stored)
        ex.cache = "BYPASS" if lookup.bypass else "MISS"
        stale = stored if stored is not None and stored.usable_stale(now) else None
        if lookup.bypass:
            return await self.fetch(ex, request, policy, out, lookup, stale)
        async with self.cache.flight(lookup) as flight:
            if not flight.leading:
                # Shielded: a follower whose caller leaves must not cancel the others' wait.
                shared = await asyncio.shield(flight.answer)
                if isinstance(shared, GatewayError):
                    if stale is None or shared.status not in _STALE_ON:
                        raise copy.copy(shared)
                    shared = ("STALE", stale)
                if shared is not None and shared[1].matches(lookup.headers):
                    ex.cache = shared[0]
                    return self.stored_answer(ex, request, shared[1])
                return await self.fetch(ex, request, policy, out, lookup, stale)
            async with self.cache.fetch_lock(lookup, fetch_time(policy)) as lock:
                if lock.entry is not None:
                    flight.share(("MISS", lock.entry))
                    return self.stored_answer(ex, request, lock.entry)
                return await self.fetch(ex, request, policy, out, lookup, stale, flight, lock)

    async def fetch(
        self, ex: Exchange, request: web.Request, policy: Policy, out: Outgoing, lookup: Lookup,
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
            upstream = await self.send(ex, policy, out)
        except GatewayError as err:
            await share(None if isinstance(err, CallerGone) else err)  # the others are still there
            if stale is not None and err.status in _STALE_ON:
                return self.serve_stale(ex, request, policy, stale)
            raise
        if stale is not None and upstream.status >= 500:
            upstream.close()
            await share(("STALE", stale))
            return self.serve_stale(ex, request, policy, stale)
        if self.keeps(policy, out, upstream.status, by_gateway=False):
            await share(None)
            return await self.answer_and_keep(ex, request, policy, out, upstream)
        limit = lookup.rule.max_size
        if upstream.content_length is not None and upstream.content_length > limit:
            await share(None)
            return await self.answer(ex, request, policy, out, upstream)  # too large to keep: streamed

        async def store(body: bytes) -> None:
            vary = upstream.headers.getall("Vary", [])
            entry = entry_for(
                upstream.status, upstream.reason or "", list(self.vendor_headers(policy, upstream).items()), body,
                lookup.headers, vary, time.time(), lookup.rule.ttl, lookup.rule.stale_if_error,
            )
            if storable(upstream.status, upstream.headers.getall("Cache-Control", []), vary):
                await self.cache.store(lookup, entry)
            # Those waiting get this answer whether or not it is stored: it is the vendor's
            # answer to the same request at the same moment.
            await share(("MISS", entry))

        async def broke(cut: AnswerBroke) -> None:
            await self.keep_broken(ex, policy, out, upstream.status, cut)
            await share(("STALE", stale) if stale is not None else broke_off(ex.vendor, cut))

        return await self.answer(ex, request, policy, out, upstream, Copy(broke, limit, store, lambda: share(None)))

    def serve_stale(self, ex: Exchange, request: web.Request, policy: Policy, stale: Entry) -> web.Response:
        log.warning("%s: every attempt failed; serving a stale stored answer", policy.vendor,
                    extra={"request_id": ex.request_id})
        ex.cache = "STALE"
        return self.stored_answer(ex, request, stale)

    def stored_answer(self, ex: Exchange, request: web.Request, entry: Entry) -> web.Response:
        headers = self.our_headers(ex, CIMultiDict(entry.headers))
        headers["Age"] = str(entry.age(time.time()))
        body = b"" if request.method == "HEAD" else entry.body
        return web.Response(status=entry.status, reason=entry.reason, headers=headers, body=body)

    @staticmethod
    def keeps(policy: Policy, out: Outgoing, status: int, *, by_gateway: bool) -> bool:
        """Whether a final answer makes this request a dead letter (CONTRACT: dead_letter)."""
        if not policy.dead_letter or out.method not in WRITES:
            return False
        return status in KEPT_GATEWAY_STATUSES if by_gateway else status >= 400

    async def keep_broken(self, ex: Exchange, policy: Policy, out: Outgoing, status: int, broke: AnswerBroke) -> None:
        """A write whose answer broke off is kept whatever its status: the vendor may have
        done it, and nobody knows what it answered."""
        if policy.dead_letter and out.method in WRITES:
            await self.dead_letters.keep(ex, out, status, f"upstream {status} ({broke})")

    async def answer_and_keep(
        self, ex: Exchange, request: web.Request, policy: Policy, out: Outgoing, upstream: aiohttp.ClientResponse
    ) -> web.StreamResponse:
        """A failed write: it is kept, with an excerpt of the vendor's error, before the
        caller can have the whole answer."""

        async def keep(head: bytes) -> None:
            await self.dead_letters.keep(ex, out, upstream.status, _describe(upstream.status, head))

        broke = functools.partial(self.keep_broken, ex, policy, out, upstream.status)
        return await self.answer(ex, request, policy, out, upstream, Excerpt(broke, keep, ERROR_EXCERPT))

    async def replay(self, entry: DeadLetter) -> Delivery:
        """Send a dead letter again through the attempts, with today's credentials."""
        policy = self.policies.get(entry.vendor)
        if policy is None:
            raise UnknownVendor(f"no vendor {entry.vendor!r} is configured any more")
        ex = Exchange(request_id=uuid.uuid4().hex, started=self.clock(), vendor=entry.vendor, caller=entry.caller)
        ex.who = self.callers.named(entry.caller)
        ex.max_wait = policy.when_exhausted.wait
        headers = CIMultiDict(entry.headers)
        headers["X-Request-Id"] = ex.request_id
        target = Target(entry.vendor, entry.path, entry.query)
        out = Outgoing(entry.method, target, headers, RequestBody(entry.body))
        try:
            upstream = await self.attempts(ex, policy, out)
        except GatewayError as err:
            return Delivery(err.status, ex.attempts, f"{err.type}: {err.detail}")
        await self.cache.written(policy, entry.method, entry.path, upstream.status, ex.request_id)
        try:
            body = await read_answer(upstream, ERROR_EXCERPT)
        except AnswerBroke as broke:
            return Delivery(upstream.status, ex.attempts, f"upstream {upstream.status} ({broke})")
        finally:
            upstream.close()
        return Delivery(upstream.status, ex.attempts, _describe(upstream.status, body))

    def route(self, ex: Exchange, request: web.Request) -> tuple[Policy, Target]:
        try:
            target = parse_target(request.raw_path)
        except UnsafeTarget as exc:
            raise BadRequest(str(exc)) from None
        policy = self.policies.get(target.vendor) if target else None
        if target is None or policy is None:
            name = f" {target.vendor!r}" if target else ""
            raise UnknownVendor(f"no vendor{name} is configured at this path")
        ex.vendor = policy.vendor
        if request.method in REFUSED_METHODS:
            raise MethodNotAllowed(f"{request.method} is not forwarded", vendor=policy.vendor)
        return policy, target

    def identify(self, ex: Exchange, request: web.Request, policy: Policy) -> Caller:
        caller = self.callers.identify(request.headers)
        ex.caller = caller.name
        self.callers.authorize(caller, policy.vendor)
        return caller

    async def attempts(self, ex: Exchange, policy: Policy, out: Outgoing) -> aiohttp.ClientResponse:
        """Attempt until an answer is final; the answer's body is not read yet."""
        credential = self.credentials[policy.vendor]
        breaker = policy.circuit_breaker
        body = out.body
        renewed = False
        while True:
            # Budget before breaker: a half-open breaker's one probe must not be handed to
            # a request that then waits for budget, or is refused it.
            ex.charged = self.budgets.charges(policy, out.method, out.target.path, ex.who)
            await self.budgets.admit(policy, ex.charged, ex.max_wait, ex.gone)
            admitted = self.clock()
            probe = False
            if breaker is not None:
                admission = await self.breakers.admit(policy.vendor, breaker)
                if not admission.allowed:
                    await self.budgets.unused(policy, ex.charged)
                    raise CircuitOpen(
                        f"{policy.vendor} is failing; the next probe is in {admission.retry_after:.0f}s",
                        vendor=policy.vendor,
                        retry_after=admission.retry_after,
                    )
                probe = admission.probe
            ex.attempts += 1
            headers = out.headers.copy()
            try:
                query = await credential.apply(headers, out.target.query)
            except GatewayError:
                await self.budgets.unused(policy, ex.charged)
                raise
            url = upstream_url(policy.upstream.origin, policy.upstream.base_path, replace(out.target, query=query))
            started = self.clock()
            response: aiohttp.ClientResponse | None = None
            try:
                response = await self.clients.send(policy, out.method, url, headers, body.payload())
            except AttemptFailed as failure:
                if not failure.sent:
                    await self.budgets.unused(policy, ex.charged)
                if body.failure is not None:
                    raise copy.copy(body.failure) from None  # the caller's doing, not the vendor's
                outcome = Outcome(failure=failure.kind, sent=failure.sent)
                reason = str(failure)
            else:
                retry_after = parse_retry_after(response.headers.get("Retry-After"), time.time())
                outcome = Outcome(status=response.status, retry_after=retry_after)
                reason = f"status {response.status}"
                await self.budgets.learn(policy, ex.charged, response.status, retry_after, response.headers)
            self.metrics.upstream_requests.labels(policy.vendor, out.method, outcome.label).inc()
            self.metrics.upstream_duration.labels(policy.vendor).observe(self.clock() - started)
            # From its turn, not its send: a busy process may send a little after the turn.
            self.budgets.observe(policy.vendor, self.clock() - admitted)
            if breaker is not None:
                failed = is_failure(outcome.status, outcome.failure)
                await self.breakers.record(policy.vendor, breaker, failed, probe)

            if response is not None and response.status == 401 and not renewed and body.replayable:
                # A token the vendor no longer takes: refresh once and try once more.
                renewed = True
                if await credential.rejected(headers):
                    response.close()
                    continue

            if not should_retry(
                policy.retry,
                ex.attempts,
                outcome,
                method=out.method,
                idempotency_key=out.idempotency_key,
                replayable=body.replayable,
            ):
                if response is not None:
                    return response
                raise _failure_error(policy, outcome, reason, ex.attempts)
            if response is not None:
                response.close()
            delay = backoff_delay(policy.retry.backoff, ex.attempts, self.jitter(), outcome.retry_after)
            log.info(
                "retrying %s %s after %s (attempt %d), in %.2fs",
                policy.vendor, out.method, reason, ex.attempts, delay,
                extra={"request_id": ex.request_id},
            )
            self.metrics.retries.labels(policy.vendor, outcome.label).inc()
            await self.sleep(delay)

    @staticmethod
    def vendor_headers(policy: Policy, upstream: aiohttp.ClientResponse) -> CIMultiDict[str]:
        """The vendor's answer headers as they go to the caller (and into the cache): its
        references to itself point into the gateway."""
        dropped = hop_by_hop(upstream.headers.getall("Connection", ()))
        headers: CIMultiDict[str] = CIMultiDict()
        for name, value in upstream.headers.items():
            if name.lower() in dropped or _CONTROL.search(value):  # unsendable: dropped
                continue
            if name.lower() in POINTERS:
                value = into_gateway(value, policy.upstream.origin, policy.upstream.base_path, f"/{policy.vendor}")
            headers.add(name, value)
        return headers

    @staticmethod
    def our_headers(ex: Exchange, headers: CIMultiDict[str]) -> CIMultiDict[str]:
        """The vendor's headers plus ours: request id, attempts, budgets, cache result."""
        headers["X-Request-Id"] = ex.request_id
        headers["X-Gateway-Attempts"] = str(ex.attempts)
        if ex.charged is not None:
            headers.update(ex.charged.headers())
        if ex.cache is not None:
            headers["X-Gateway-Cache"] = ex.cache
        return headers

    async def answer(
        self, ex: Exchange, request: web.Request, policy: Policy, out: Outgoing, upstream: aiohttp.ClientResponse,
        tap: Tap | None = None,
    ) -> web.StreamResponse:
        """The vendor's answer to the caller as its bytes arrive, in one write when all of
        its body came with its head; ``tap`` sees them on the way (by default a write whose
        answer breaks off is kept). Nothing is retried once bytes went out."""
        if tap is None:
            tap = Tap(functools.partial(self.keep_broken, ex, policy, out, upstream.status))
        headers = self.our_headers(ex, self.vendor_headers(policy, upstream))
        whole = arrived_whole(upstream)
        if whole is not None:
            upstream.release()
            await tap.seen(whole, True)
            return web.Response(status=upstream.status, reason=upstream.reason, headers=headers, body=whole)
        streamed = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
        length = upstream.content_length
        received = 0
        try:
            await streamed.prepare(request)  # the head goes out now: a long poll's caller sees it at once
            ended = False
            async for chunk in upstream.content.iter_chunked(_CHUNK):
                received += len(chunk)
                ended = received == length
                await tap.seen(chunk, ended)
                await streamed.write(chunk)
            if not ended:
                await tap.seen(b"", True)
            await streamed.write_eof()
        except (ConnectionError, aiohttp.ClientError, asyncio.TimeoutError) as exc:
            if ex.gone():
                ex.left = True
                await tap.left()
            else:
                # Headers are gone already: all we can do is cut the caller's connection so a
                # truncated body is seen as one (missing bytes or missing last chunk).
                cut = AnswerBroke(received, length, exc)
                log.warning("%s: the vendor's %s", ex.vendor, cut, extra={"request_id": ex.request_id})
                streamed[GATEWAY_ERROR] = broke_off(ex.vendor, cut)
                # Before the cut: a server that cancels the handlers of closed connections
                # would cancel the keeping too.
                await tap.broke(cut)
                if request.transport is not None:
                    request.transport.close()
        except asyncio.CancelledError:
            # A server that cancels the handler of a caller that left: a kept write is kept still.
            await asyncio.shield(tap.left())
            raise
        finally:
            upstream.close()
        return streamed


def fetch_time(policy: Policy) -> float:
    """The longest one fetch can take: every attempt, the backoffs between them and a
    budget wait before each (how long other processes wait for its answer)."""
    retry = policy.retry
    return retry.attempts * (policy.timeout + policy.when_exhausted.wait) + (retry.attempts - 1) * retry.backoff.max


def request_id(request: web.BaseRequest) -> str:
    """The caller's X-Request-Id when it is a sane token, else a new one."""
    supplied = request.headers.get("X-Request-Id", "")
    return supplied if _REQUEST_ID.fullmatch(supplied) else uuid.uuid4().hex


def forward_headers(request: web.Request, request_id: str, body: RequestBody) -> CIMultiDict[str]:
    dropped = hop_by_hop(request.headers.getall("Connection", ()))
    headers = CIMultiDict(
        (name, value) for name, value in request.headers.items() if name.lower() not in dropped and not caller_only(name)
    )
    headers["X-Request-Id"] = request_id
    if not body.replayable and request.content_length is not None:
        # A streamed upload keeps its declared length instead of becoming chunked.
        headers["Content-Length"] = str(request.content_length)
    return headers


def broke_off(vendor: str, broke: AnswerBroke) -> UpstreamUnavailable:
    return UpstreamUnavailable(f"{vendor}'s {broke}", vendor=vendor)


def _describe(status: int, body: bytes) -> str:
    """The vendor's error as kept with a dead letter: its status and the start of its body."""
    text = body[:ERROR_EXCERPT].decode("utf-8", "replace")
    return f"upstream {status}: {text}" if text else f"upstream {status}"


def _failure_error(policy: Policy, outcome: Outcome, reason: str, attempts: int) -> GatewayError:
    tries = f"after {attempts} attempt{'s' if attempts > 1 else ''}"
    if outcome.failure == "timeout":
        return UpstreamTimeout(f"{policy.vendor} did not answer in {policy.timeout:g}s {tries}", vendor=policy.vendor)
    failed = "gave no usable answer" if outcome.sent else "could not be reached"
    return UpstreamUnavailable(f"{policy.vendor} {failed} {tries}: {reason}", vendor=policy.vendor)


def problem_response(err: GatewayError, request_id: str, attempts: int = 0) -> web.Response:
    """The problem+json answer for one of our errors, marked for the metrics (GATEWAY_ERROR)."""
    response = web.Response(
        status=err.status,
        body=orjson.dumps(err.problem()),
        content_type="application/problem+json",
    )
    retry_after = err.retry_after_seconds()
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    response.headers["X-Request-Id"] = request_id
    response.headers.update(err.headers())
    if attempts:
        response.headers["X-Gateway-Attempts"] = str(attempts)
    response[GATEWAY_ERROR] = err
    return response
