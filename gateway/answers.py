"""Step 6, the answer: the vendor's answer streamed to the caller with our headers added, a
stored answer from the cache, and our own problems (RFC 9457) when the request fails.

Every answer that carries an error of ours is marked with it (``GATEWAY_ERROR``) for the
metrics (gateway_errors_total): problems, and vendors' answers that broke off or that the
caller left during.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time

import aiohttp
import orjson
from aiohttp import web
from multidict import CIMultiDict

from gateway.config.model import Policy
from gateway.core.cache import Entry
from gateway.core.headers import HOP_BY_HOP, POINTERS, hop_by_hop, into_gateway
from gateway.errors import GatewayError, UpstreamUnavailable
from gateway.request import RequestContext
from gateway.taps import Tap
from gateway.upstream import AnswerBroke, arrived_whole, read_part

log = logging.getLogger("gateway.pipeline")

GATEWAY_ERROR = web.ResponseKey("gateway_error", GatewayError)

def marked(response: web.StreamResponse) -> GatewayError | None:
    """The error of ours an answer carries (GATEWAY_ERROR), if any. Most answers carry
    nothing in their mapping: looked at only when something is there, since a missing
    key's ``get`` costs a raised and caught KeyError."""
    return response.get(GATEWAY_ERROR) if len(response) else None


_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_CHUNK = 64 * 1024


def vendor_headers(
    policy: Policy, upstream: aiohttp.ClientResponse, headers: CIMultiDict[str] | None = None
) -> CIMultiDict[str]:
    """The vendor's answer headers as they go to the caller (and into the cache), added
    to ``headers`` (an answer's own, filled before it goes out) or to new ones: its
    references to itself point into the gateway."""
    answer = upstream.headers
    dropped = hop_by_hop(answer.getall("Connection")) if "Connection" in answer else HOP_BY_HOP
    # One search over all the values: a value that cannot be sent is rare.
    unsendable = _CONTROL.search("".join(answer.values())) is not None
    kept: list[tuple[str, str]] = []
    for name, value in answer.items():
        lowered = name.lower()
        if lowered in dropped or (unsendable and _CONTROL.search(value)):  # unsendable: dropped
            continue
        if lowered in POINTERS:
            value = into_gateway(value, policy.upstream.origin, policy.upstream.base_path, f"/{policy.vendor}")
        kept.append((name, value))
    if headers is None:
        return CIMultiDict(kept)
    headers.extend(kept)
    return headers


def our_headers(ctx: RequestContext, headers: CIMultiDict[str]) -> CIMultiDict[str]:
    """The vendor's headers plus ours: request id, attempts, budgets, cache result."""
    headers["X-Request-Id"] = ctx.request_id
    headers["X-Gateway-Attempts"] = str(ctx.attempts)
    if ctx.charged is not None:
        headers.update(ctx.charged.headers())
    if ctx.cache is not None:
        headers["X-Gateway-Cache"] = ctx.cache
    return headers


def stored_answer(ctx: RequestContext, request: web.Request, entry: Entry) -> web.Response:
    """An answer from the cache, with its age."""
    headers = our_headers(ctx, CIMultiDict(entry.headers))
    headers["Age"] = str(entry.age(time.time()))
    body = b"" if request.method == "HEAD" else entry.body
    return web.Response(status=entry.status, reason=entry.reason, headers=headers, body=body)


async def stream(
    ctx: RequestContext, request: web.Request, policy: Policy, upstream: aiohttp.ClientResponse, tap: Tap
) -> web.StreamResponse:
    """The vendor's answer to the caller as its bytes arrive, in one write when all of its
    body came with its head; ``tap`` sees them on the way. Nothing is retried once bytes
    went out."""
    whole = arrived_whole(upstream)
    if whole is not None:
        upstream.release()
        answer = web.Response(status=upstream.status, reason=upstream.reason, body=whole)
        our_headers(ctx, vendor_headers(policy, upstream, answer.headers))  # into its own: no copy
        if tap.watching:
            await tap.seen(whole, True)
        return answer
    streamed = web.StreamResponse(status=upstream.status, reason=upstream.reason)
    our_headers(ctx, vendor_headers(policy, upstream, streamed.headers))
    length = upstream.content_length
    received = 0
    try:
        await streamed.prepare(request)  # the head goes out now: a long poll's caller sees it at once
        ended = False
        while chunk := await read_part(upstream.content, _CHUNK, policy.timeout):
            received += len(chunk)
            ended = received == length
            if tap.watching:
                await tap.seen(chunk, ended)
            await streamed.write(chunk)
        if not ended and tap.watching:
            await tap.seen(b"", True)
        await streamed.write_eof()
    except (ConnectionError, aiohttp.ClientError, asyncio.TimeoutError) as exc:
        if ctx.gone():
            ctx.left = True
            if tap.watching:
                await tap.left()
        else:
            # Headers are gone already: all we can do is cut the caller's connection so a
            # truncated body is seen as one (missing bytes or missing last chunk).
            cut = AnswerBroke(received, length, exc)
            log.warning("%s: the vendor's %s", ctx.vendor, cut, extra={"request_id": ctx.request_id})
            streamed[GATEWAY_ERROR] = broke_off(ctx.vendor, cut)
            # Before the cut: a server that cancels the handlers of closed connections
            # would cancel the keeping too.
            await tap.broke(cut)
            if request.transport is not None:
                request.transport.close()
    except asyncio.CancelledError:
        # A server that cancels the handler of a caller that left: a kept write is kept still.
        if tap.watching:
            await asyncio.shield(tap.left())
        raise
    finally:
        upstream.close()
    return streamed


def broke_off(vendor: str, broke: AnswerBroke) -> UpstreamUnavailable:
    """Our error for a vendor's answer that broke off."""
    return UpstreamUnavailable(f"{vendor}'s {broke}", vendor=vendor)


def problem(ctx: RequestContext, err: GatewayError) -> web.Response:
    """Our error as this request's answer: it names the vendor, and the cache's label."""
    if err.vendor is None and ctx.vendor != "unknown":
        err.vendor = ctx.vendor
    response = problem_response(err, ctx.request_id, ctx.attempts)
    if ctx.cache is not None:
        response.headers["X-Gateway-Cache"] = ctx.cache
    return response


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
