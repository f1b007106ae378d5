"""Keeping failed writes as dead letters, and counting them per vendor."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from gateway.config.model import ApiKey, Policy
from gateway.deadletters import DeadLetter
from gateway.errors import StorageError
from gateway.metrics import Metrics
from gateway.storage import Storage

if TYPE_CHECKING:
    from gateway.pipeline import Exchange, Outgoing

log = logging.getLogger("gateway.deadletters")

# Never kept: credentials (the gateway's are added per attempt and never reach here; these
# would be the caller's own) and what is made anew on replay.
_NOT_KEPT = frozenset({"authorization", "proxy-authorization", "x-gateway-key", "x-request-id", "cookie"})


class DeadLetterBox:
    def __init__(self, storage: Storage, metrics: Metrics, policies: Mapping[str, Policy]) -> None:
        self.storage = storage
        self._metrics = metrics
        self._policies = policies
        for vendor, policy in policies.items():
            if policy.dead_letter:  # shown at 0 from the start, so an alert on its increase works
                metrics.dead_letters_lost.labels(vendor)

    async def keep(self, ex: Exchange, out: Outgoing, status: int, error: str) -> None:
        credentials = self._policies[ex.vendor].credentials
        dropped = set(_NOT_KEPT)
        query = out.target.query
        if isinstance(credentials, ApiKey) and credentials.header:
            dropped.add(credentials.header.lower())
        if isinstance(credentials, ApiKey) and credentials.query and query:
            query = "&".join(p for p in query.split("&") if p.split("=", 1)[0] != credentials.query)
        now = time.time()
        entry = DeadLetter(
            id=DeadLetter.new_id(now),
            vendor=ex.vendor,
            caller=ex.caller,
            method=out.method,
            path=out.target.path,
            query=query,
            headers=[(k, v) for k, v in out.headers.items() if k.lower() not in dropped],
            body=out.body.data if out.body.replayable else None,
            status=status,
            error=error,
            attempts=ex.attempts,
            first_at=ex.started_at,
            last_at=now,
        )
        try:
            await self.storage.put_dead_letter(entry)
        except StorageError as exc:
            # Loud, since the write is lost otherwise. What identifies it, never its body,
            # headers or query (they may carry personal data or a caller's secret).
            self._metrics.dead_letters_lost.labels(ex.vendor).inc()
            log.error(
                "dead letter LOST: %s %s %s (status %d, %d attempt(s), caller %s) could not be stored: %s id=%s",
                ex.vendor, out.method, out.target.path, status, ex.attempts, ex.caller, exc, ex.request_id,
                extra={"request_id": ex.request_id},
            )
            return
        log.warning("%s %s %s kept as dead letter %s: %s", ex.vendor, out.method, out.target.path, entry.id, error[:200],
                    extra={"request_id": ex.request_id})
        await self.count(ex.vendor)

    async def count(self, vendor: str) -> None:
        try:
            self._metrics.dead_letters.labels(vendor).set(await self.storage.count_dead_letters(vendor))
        except StorageError as exc:
            log.warning("dead letters of %s not counted: %s", vendor, exc)
