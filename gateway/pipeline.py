"""One proxied request's way through the gateway (DESIGN.md, "The request's way").

1. route      vendor from the first path segment; the rest checked; URL from the policy
2. caller     who is calling, may they use this vendor
3. (cache)    arrives with the cache issue
4. attempts   per attempt: (breaker, budget), credential, send, classify, back off
5. (store)    arrives with the cache and dead-letter issues
6. answer     stream the vendor's answer with our headers added

Cheap steps come first, so what costs money (budget, upstream calls) is spent last.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace

import aiohttp
import orjson
from aiohttp import web
from multidict import CIMultiDict

from gateway.body import RequestBody, read_body
from gateway.callers import CallerDirectory
from gateway.config.loader import Settings
from gateway.config.model import HTTP_METHODS, Caller, Policy
from gateway.core.attempts import Outcome, backoff_delay, should_retry
from gateway.core.headers import CALLER_ONLY, hop_by_hop, parse_retry_after
from gateway.core.routing import Target, UnsafeTarget, parse_target, upstream_url
from gateway.credentials import CredentialProvider
from gateway.errors import (
    BadRequest,
    GatewayError,
    PayloadTooLarge,
    UnknownVendor,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.metrics import Metrics
from gateway.upstream import AttemptFailed, UpstreamClients

log = logging.getLogger("gateway.pipeline")

_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,200}")
_CHUNK = 64 * 1024


class MethodNotAllowed(GatewayError):
    """TRACE would echo the injected credential back to the caller; CONNECT would tunnel."""

    status = 405
    type = "method-not-allowed"
    title = "Method not forwarded"


@dataclass
class Exchange:
    """What the pipeline knows about one request as it goes; labels start pessimistic."""

    request: web.Request
    request_id: str
    started: float
    vendor: str = "unknown"
    caller: str = "unauthenticated"
    attempts: int = 0


class Pipeline:
    def __init__(
        self,
        settings: Settings,
        clients: UpstreamClients,
        credentials: Mapping[str, CredentialProvider],
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.policies: Mapping[str, Policy] = settings.policies
        self.max_body = settings.config.max_body
        self.callers = CallerDirectory(settings.config.callers)
        self.credentials = credentials
        self.clients = clients
        self.metrics = metrics
        self.clock = clock
        self.sleep = sleep
        self.jitter = jitter

    async def handle(self, request: web.Request) -> web.StreamResponse:
        supplied = request.headers.get("X-Request-Id", "")
        ex = Exchange(
            request=request,
            request_id=supplied if _REQUEST_ID.fullmatch(supplied) else uuid.uuid4().hex,
            started=self.clock(),
        )
        status = 500
        try:
            policy, target = self.route(ex)
            self.identify(ex, policy)
            body = await read_body(request, self.max_body)
            upstream = await self.attempts(ex, policy, target, body)
            status = upstream.status
            return await self.answer(ex, upstream)
        except GatewayError as err:
            status = err.status
            return problem_response(err, ex.request_id, ex.attempts)
        except Exception:
            # A bug of ours must still answer in the contract's shape, and say where to look.
            log.exception("unexpected error", extra={"request_id": ex.request_id})
            vendor = None if ex.vendor == "unknown" else ex.vendor
            internal = GatewayError(f"internal gateway error; the log has request id {ex.request_id}", vendor=vendor)
            status = internal.status
            return problem_response(internal, ex.request_id, ex.attempts)
        finally:
            method = request.method if request.method in HTTP_METHODS else "OTHER"
            self.metrics.requests.labels(ex.vendor, method, str(status), ex.caller).inc()
            if ex.vendor != "unknown":
                self.metrics.request_duration.labels(ex.vendor).observe(self.clock() - ex.started)

    def route(self, ex: Exchange) -> tuple[Policy, Target]:
        try:
            target = parse_target(ex.request.raw_path)
        except UnsafeTarget as exc:
            raise BadRequest(str(exc)) from None
        policy = self.policies.get(target.vendor) if target else None
        if target is None or policy is None:
            name = f" {target.vendor!r}" if target else ""
            raise UnknownVendor(f"no vendor{name} is configured at this path")
        ex.vendor = policy.vendor
        if ex.request.method not in HTTP_METHODS:
            raise MethodNotAllowed(f"{ex.request.method} is not forwarded", vendor=policy.vendor)
        return policy, target

    def identify(self, ex: Exchange, policy: Policy) -> Caller:
        caller = self.callers.identify(ex.request.headers)
        ex.caller = caller.name
        self.callers.authorize(caller, policy.vendor)
        return caller

    async def attempts(
        self, ex: Exchange, policy: Policy, target: Target, body: RequestBody
    ) -> aiohttp.ClientResponse:
        """Attempt until an answer is final; the answer's body is not read yet."""
        request = ex.request
        idempotency_key = "Idempotency-Key" in request.headers
        credential = self.credentials[policy.vendor]
        renewed = False
        while True:
            ex.attempts += 1
            headers = forward_headers(request, ex.request_id, body)
            query = await credential.apply(headers, target.query)
            url = upstream_url(policy.upstream.origin, policy.upstream.base_path, replace(target, query=query))
            started = self.clock()
            response: aiohttp.ClientResponse | None = None
            try:
                response = await self.clients.send(policy, request.method, url, headers, body.payload())
            except AttemptFailed as failure:
                if body.too_large:
                    raise PayloadTooLarge(f"the request body is over the limit of {self.max_body} bytes") from None
                outcome = Outcome(failure=failure.kind, sent=failure.sent)
                reason = str(failure)
            else:
                retry_after = parse_retry_after(response.headers.get("Retry-After"), time.time())
                outcome = Outcome(status=response.status, retry_after=retry_after)
                reason = f"status {response.status}"
            self.metrics.upstream_requests.labels(policy.vendor, request.method, outcome.label).inc()
            self.metrics.upstream_duration.labels(policy.vendor).observe(self.clock() - started)

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
                method=request.method,
                idempotency_key=idempotency_key,
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
                policy.vendor, request.method, reason, ex.attempts, delay,
                extra={"request_id": ex.request_id},
            )
            self.metrics.retries.labels(policy.vendor, outcome.label).inc()
            await self.sleep(delay)

    async def answer(self, ex: Exchange, upstream: aiohttp.ClientResponse) -> web.StreamResponse:
        """Stream the vendor's answer to the caller; nothing is retried once bytes went out."""
        request = ex.request
        out = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        dropped = hop_by_hop(upstream.headers.getall("Connection", ()))
        for name, value in upstream.headers.items():
            if name.lower() not in dropped:
                out.headers.add(name, value)
        out.headers["X-Request-Id"] = ex.request_id
        out.headers["X-Gateway-Attempts"] = str(ex.attempts)
        length = upstream.content_length
        if length is not None and length <= _CHUNK and request.method != "HEAD" and upstream.status not in (204, 304):
            # A small answer goes out whole: one write instead of headers, body and end.
            try:
                body = await upstream.read()
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                raise UpstreamUnavailable(
                    f"{ex.vendor} broke off its answer: {type(exc).__name__}", vendor=ex.vendor
                ) from None
            finally:
                upstream.release()
            return web.Response(status=upstream.status, reason=upstream.reason, headers=out.headers, body=body)
        try:
            await out.prepare(request)
            async for chunk in upstream.content.iter_chunked(_CHUNK):
                await out.write(chunk)
            await out.write_eof()
        except ConnectionResetError:
            # Before ClientError: aiohttp's ClientConnectionResetError, raised when the
            # caller is gone, is both.
            log.info("%s: caller went away mid-answer", ex.vendor, extra={"request_id": ex.request_id})
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            # Headers are gone already: all we can do is cut the caller's connection so a
            # truncated body is seen as one (missing bytes or missing last chunk).
            log.warning(
                "%s: upstream body broke off: %s", ex.vendor, type(exc).__name__, extra={"request_id": ex.request_id}
            )
            if request.transport is not None:
                request.transport.close()
        finally:
            upstream.close()
        return out


def forward_headers(request: web.Request, request_id: str, body: RequestBody) -> CIMultiDict[str]:
    dropped = hop_by_hop(request.headers.getall("Connection", ())) | CALLER_ONLY
    headers = CIMultiDict((name, value) for name, value in request.headers.items() if name.lower() not in dropped)
    headers["X-Request-Id"] = request_id
    if not body.replayable and request.content_length is not None:
        # A streamed upload keeps its declared length instead of becoming chunked.
        headers["Content-Length"] = str(request.content_length)
    return headers


def _failure_error(policy: Policy, outcome: Outcome, reason: str, attempts: int) -> GatewayError:
    tries = f"after {attempts} attempt{'s' if attempts > 1 else ''}"
    if outcome.failure == "timeout":
        return UpstreamTimeout(f"{policy.vendor} did not answer in {policy.timeout:g}s {tries}", vendor=policy.vendor)
    return UpstreamUnavailable(f"{policy.vendor} could not be reached {tries}: {reason}", vendor=policy.vendor)


def problem_response(err: GatewayError, request_id: str, attempts: int = 0) -> web.Response:
    response = web.Response(
        status=err.status,
        body=orjson.dumps(err.problem()),
        content_type="application/problem+json",
    )
    retry_after = err.retry_after_seconds()
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    response.headers["X-Request-Id"] = request_id
    if attempts:
        response.headers["X-Gateway-Attempts"] = str(attempts)
    return response
