"""Dead letters: which requests become one (``should_keep``, the one place that decides),
keeping them without a secret, counting them per vendor, and how a replay went.

A write (POST, PUT, PATCH, DELETE) of a vendor with ``dead_letter: true`` is kept when
its way ends in one of three ways: the vendor's final answer is an error (kept, with an
excerpt of that error, before the caller has the whole answer); the gateway gives up on it
with a 429, 502, 503 or 504 of its own; or the vendor's answer breaks off on the way
(whatever its status: the vendor may have done it, and nobody knows what it answered).
The record itself is gateway.core.dead_letter's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from gateway.config.model import ApiKey, Policy
from gateway.core.dead_letter import DeadLetter
from gateway.credentials import without_parameter
from gateway.errors import GatewayError, StorageError
from gateway.metrics import Metrics
from gateway.request import RequestContext, UpstreamRequest
from gateway.storage import DeadLetterStore
from gateway.taps import UNWATCHED, Excerpt, Tap
from gateway.upstream import AnswerBroke

log = logging.getLogger("gateway.deadletters")

WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
KEPT_GATEWAY_STATUSES = frozenset({429, 502, 503, 504})
ERROR_EXCERPT = 2048

# How a request's way ended: the vendor's final answer, the gateway's own error after
# the attempts, or the vendor's answer breaking off on its way to the caller.
Ending = Literal["answered", "gave up", "broke off"]

# Never kept: credentials (the gateway's are added per attempt and never reach here; these
# would be the caller's own) and what is made anew on replay.
_NOT_KEPT = frozenset({"authorization", "proxy-authorization", "x-gateway-key", "x-request-id", "cookie"})


def should_keep(policy: Policy, method: str, status: int, ending: Ending) -> bool:
    """Whether a request's way, ended so with ``status``, makes it a dead letter (CONTRACT: dead_letter)."""
    if not policy.dead_letter or method not in WRITES:
        return False
    if ending == "broke off":
        return True
    return status in KEPT_GATEWAY_STATUSES if ending == "gave up" else status >= 400


@dataclass(frozen=True)
class Delivery:
    """How a replayed dead letter went."""

    status: int
    attempts: int
    error: str


def describe(status: int, body: bytes) -> str:
    """The vendor's error as kept with a dead letter: its status and the start of its body."""
    text = body[:ERROR_EXCERPT].decode("utf-8", "replace")
    return f"upstream {status}: {text}" if text else f"upstream {status}"


class DeadLetters:
    """Keeps the requests ``should_keep`` picks, and counts them per vendor for the metrics."""

    def __init__(self, storage: DeadLetterStore, metrics: Metrics, policies: Mapping[str, Policy]) -> None:
        self.storage = storage
        self._metrics = metrics
        self._policies = policies
        self._listeners: list[Callable[[str, int | None], None]] = []
        for vendor, policy in policies.items():
            if policy.dead_letter:  # shown at 0 from the start, so an alert on its increase works
                metrics.dead_letters_lost.labels(vendor)

    async def gave_up(self, ctx: RequestContext, policy: Policy, out: UpstreamRequest, err: GatewayError) -> None:
        """The gateway gave up on the request with ``err``."""
        if should_keep(policy, out.method, err.status, "gave up"):
            await self.keep(ctx, out, err.status, f"{err.type}: {err.detail}")

    async def broke_off(
        self, ctx: RequestContext, policy: Policy, out: UpstreamRequest, status: int, cut: AnswerBroke
    ) -> None:
        """The vendor's answer broke off on its way to the caller."""
        if should_keep(policy, out.method, status, "broke off"):
            await self.keep(ctx, out, status, f"upstream {status} ({cut})")

    def tap(self, ctx: RequestContext, policy: Policy, out: UpstreamRequest, status: int) -> Tap:
        """What watches the vendor's answer on its way: a final error is kept with an excerpt
        of its body before the caller can have the whole answer, a broken one in any case."""
        if not policy.dead_letter or out.method not in WRITES:
            return UNWATCHED  # never kept, however it ends

        async def broke(cut: AnswerBroke) -> None:
            await self.broke_off(ctx, policy, out, status, cut)

        if not should_keep(policy, out.method, status, "answered"):
            return Tap(broke)

        async def keep(head: bytes) -> None:
            await self.keep(ctx, out, status, describe(status, head))

        return Excerpt(broke, keep, ERROR_EXCERPT)

    async def keep(self, ctx: RequestContext, out: UpstreamRequest, status: int, error: str) -> None:
        credentials = self._policies[ctx.vendor].credentials
        dropped = set(_NOT_KEPT)
        query = out.target.query
        if isinstance(credentials, ApiKey) and credentials.header:
            dropped.add(credentials.header.lower())
        if isinstance(credentials, ApiKey) and credentials.query:
            query = without_parameter(query, credentials.query)
        now = time.time()
        entry = DeadLetter(
            id=DeadLetter.new_id(now),
            vendor=ctx.vendor,
            caller=ctx.caller,
            method=out.method,
            path=out.target.path,
            query=query,
            headers=[(k, v) for k, v in out.headers.items() if k.lower() not in dropped],
            body=out.body.data if out.body.replayable else None,
            status=status,
            error=error,
            attempts=ctx.attempts,
            first_at=ctx.started_at,
            last_at=now,
        )
        try:
            await self.storage.put_dead_letter(entry)
        except StorageError as exc:
            # Loud, since the write is lost otherwise. What identifies it, never its body,
            # headers or query (they may carry personal data or a caller's secret).
            self._metrics.dead_letters_lost.labels(ctx.vendor).inc()
            log.error(
                "dead letter LOST: %s %s %s (status %d, %d attempt(s), caller %s) could not be stored: %s id=%s",
                ctx.vendor, out.method, out.target.path, status, ctx.attempts, ctx.caller, exc, ctx.request_id,
                extra={"request_id": ctx.request_id},
            )
            return
        log.warning("%s %s %s kept as dead letter %s: %s", ctx.vendor, out.method, out.target.path, entry.id,
                    error[:200], extra={"request_id": ctx.request_id})
        count = await self.count(ctx.vendor)
        for listener in self._listeners:
            listener(ctx.vendor, count)

    def watch(self, listener: Callable[[str, int | None], None]) -> None:
        """Call ``listener(vendor, count kept)`` after each dead letter kept."""
        self._listeners.append(listener)

    async def count_every(self) -> None:
        """Count what storage holds for every vendor that keeps dead letters: what another
        process kept or replayed shows in this one's metrics too (a failing storage is
        told elsewhere; the counts stay as they were)."""
        for vendor, policy in self._policies.items():
            if policy.dead_letter:
                try:
                    kept = await self.storage.count_dead_letters(vendor)
                except StorageError:
                    return
                self._metrics.dead_letters.labels(vendor).set(kept)

    async def count(self, vendor: str) -> int | None:
        try:
            kept = await self.storage.count_dead_letters(vendor)
        except StorageError as exc:
            log.warning("dead letters of %s not counted: %s", vendor, exc)
            return None
        self._metrics.dead_letters.labels(vendor).set(kept)
        return kept
