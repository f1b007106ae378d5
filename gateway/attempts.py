"""Step 4, the attempts, layered like httpx's ``send -> _send_handling_auth ->
_send_single_request``:

- ``send``: the retry loop. Attempt until the answer is final (gateway.core.attempts
  decides), backing off with jitter between attempts and honouring ``Retry-After``.
- ``_credential_flow``: a static credential is sent once; a token the vendor refuses
  with a 401 is refreshed and sent once more (once per request, and only when the body
  can be sent again).
- ``_admitted_send``: one attempt. Budget first (a half-open breaker's one probe must
  never wait for budget), then the auth stop and the breaker, the credential, the send;
  what the answer says is recorded for the budgets, the breaker and the metrics. An
  attempt that never reached the vendor gives its charge back.

The answer's body is not read here, but for the first bytes of an answer that may be a
quota refusal (gateway.core.signals), which are left in it for the caller.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import random
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import NamedTuple

import aiohttp
from multidict import CIMultiDict

from gateway.auth_stops import AuthStops
from gateway.breakers import CircuitBreakers
from gateway.budgets import Budgets
from gateway.config.model import CircuitBreaker, Policy
from gateway.core.attempts import Outcome, backoff_delay, should_retry
from gateway.core.auth_stop import Admission as AuthAdmission
from gateway.core.breaker import is_failure
from gateway.core.signals import is_quota_refusal, refusal_body_size
from gateway.core.headers import parse_retry_after
from gateway.core.routing import upstream_url
from gateway.credentials import CredentialProvider
from gateway.errors import CircuitOpen, GatewayError, UpstreamTimeout, UpstreamUnavailable
from gateway.metrics import Metrics
from gateway.request import RequestContext, UpstreamRequest
from gateway.upstream import AttemptFailed, UpstreamClients, peek_answer

log = logging.getLogger("gateway.pipeline")


class Tried(NamedTuple):
    """What one attempt came to: the vendor's answer (None when there was none) and why.
    A named tuple: one is made per attempt, a frozen dataclass costs thrice as much."""

    answer: aiohttp.ClientResponse | None
    outcome: Outcome
    reason: str
    headers: CIMultiDict[str]  # as sent, the credential included
    auth: AuthAdmission  # what the auth stop said of it (a refresh's retry: the same)
    quota: bool = False  # the vendor refused it for a quota (core.signals.is_quota_refusal)


class Attempts:
    def __init__(
        self,
        clients: UpstreamClients,
        credentials: Mapping[str, CredentialProvider],
        breakers: CircuitBreakers,
        auth_stops: AuthStops,
        budgets: Budgets,
        metrics: Metrics,
    ) -> None:
        self.clients = clients
        self.credentials = credentials
        self._breakers = breakers
        self.auth_stops = auth_stops
        self._budgets = budgets
        self._metrics = metrics

    async def send(self, ctx: RequestContext, policy: Policy, out: UpstreamRequest) -> aiohttp.ClientResponse:
        """Attempt until an answer is final; our error when there is none."""
        credential = self.credentials[policy.vendor]
        may_renew = True
        while True:
            tried, renewed = await self._credential_flow(ctx, policy, out, credential, may_renew)
            may_renew = may_renew and not renewed
            outcome = tried.outcome
            if not should_retry(
                policy.retry,
                ctx.attempts,
                outcome,
                method=out.method,
                idempotency_key=out.idempotency_key,
                replayable=out.body.replayable,
            ):
                if tried.answer is not None:
                    return tried.answer
                raise _failure_error(policy, outcome, tried.reason, ctx.attempts)
            if tried.answer is not None:
                tried.answer.close()
            delay = backoff_delay(policy.retry.backoff, ctx.attempts, random.random(), outcome.retry_after)
            log.info(
                "retrying %s %s after %s (attempt %d), in %.2fs",
                policy.vendor, out.method, tried.reason, ctx.attempts, delay,
                extra={"request_id": ctx.request_id},
            )
            self._metrics.retries.labels(policy.vendor, outcome.label).inc()
            await asyncio.sleep(delay)

    async def _credential_flow(
        self, ctx: RequestContext, policy: Policy, out: UpstreamRequest, credential: CredentialProvider,
        may_renew: bool,
    ) -> tuple[Tried, bool]:
        """One attempt, and one more with a fresh token when the vendor no longer takes the
        one sent; True when this request's one renewal was used. The answer it comes to
        is the auth stop's to count (the retry with a fresh token goes as the same probe)."""
        tried = await self._admitted_send(ctx, policy, out, credential)
        renewed = may_renew and tried.answer is not None and tried.answer.status == 401 and out.body.replayable
        if renewed and tried.answer is not None and await credential.rejected(tried.headers):
            tried.answer.close()
            tried = await self._admitted_send(ctx, policy, out, credential, tried.auth)
        if tried.answer is None:
            await self.auth_stops.unanswered(policy, tried.auth)
        elif not tried.quota and self.auth_stops.counts(policy, tried.auth, tried.answer.status):
            await self.auth_stops.record(policy, tried.auth, tried.answer.status)
        return tried, renewed

    async def _admitted_send(
        self, ctx: RequestContext, policy: Policy, out: UpstreamRequest, credential: CredentialProvider,
        auth: AuthAdmission | None = None,
    ) -> Tried:
        charged = ctx.charged = self._budgets.charges_for(policy, out.method, out.target.path, ctx.who)
        queued = time.monotonic()
        await self._budgets.charge(policy, charged, ctx.max_wait, ctx.gone)
        admitted = time.monotonic()
        ctx.budget_seconds += admitted - queued
        breaker = policy.circuit_breaker
        answer: aiohttp.ClientResponse | None = None
        quota = False
        try:
            if auth is None:
                auth = self.auth_stops.held(policy) or await self.auth_stops.admit(policy)
            probe = await self._breaker_admits(policy, breaker) if breaker is not None else False
            ctx.attempts += 1
            headers = out.headers.copy()
            target = out.target
            query = await credential.apply(headers, target.query)
            if query != target.query:
                target = replace(target, query=query)
            url = upstream_url(policy.upstream.origin, policy.upstream.base_path, target)
            started = time.monotonic()
            answer = await self.clients.send(policy, out.method, url, headers, out.body.payload())
        except (GatewayError, AttemptFailed) as exc:
            if not (isinstance(exc, AttemptFailed) and exc.sent):
                await self._budgets.give_back(policy, charged)
            if not isinstance(exc, AttemptFailed):
                if auth is not None:  # admitted, then stopped by something else: no answer
                    await self.auth_stops.unanswered(policy, auth)
                raise
            if exc.by_caller is not None:
                raise copy.copy(exc.by_caller) from None  # the caller's doing, not the vendor's
            outcome = Outcome(failure=exc.kind, sent=exc.sent)
            reason = str(exc)
        else:
            retry_after = parse_retry_after(answer.headers.get("Retry-After"), time.time())
            outcome = Outcome(status=answer.status, retry_after=retry_after)
            reason = f"status {answer.status}"
            size = refusal_body_size(policy.signals, answer.status)
            head = await peek_answer(answer, size, policy.timeout) if size else b""
            quota = is_quota_refusal(policy.signals, answer.status, head) if head else False
            if self._budgets.follows(policy, charged, answer.status, retry_after):
                await self._budgets.follow_answer(policy, charged, answer.status, retry_after, answer.headers, head)
        self._metrics.upstream_requests_of(policy.vendor, out.method, outcome.label).inc()
        done = time.monotonic()
        took = done - started
        ctx.upstream_seconds += took
        self._metrics.upstream_duration_of(policy.vendor).observe(took)
        # From its turn, not its send: a busy process may send a little after the turn.
        self._budgets.observe(policy.vendor, done - admitted)
        assert auth is not None  # admitted, or raised above
        if breaker is not None:
            failed = is_failure(outcome.status, outcome.failure) and not quota
            await self._breakers.record(policy.vendor, breaker, failed, probe)
        return Tried(answer, outcome, reason, headers, auth, quota)

    async def _breaker_admits(self, policy: Policy, breaker: CircuitBreaker) -> bool:
        """Whether this attempt is the half-open breaker's probe; CircuitOpen when it is open."""
        admission = await self._breakers.admit(policy.vendor, breaker)
        if not admission.allowed:
            raise CircuitOpen(
                f"{policy.vendor} is failing; the next probe is in {admission.retry_after:.0f}s",
                vendor=policy.vendor,
                retry_after=admission.retry_after,
            )
        return admission.probe


def _failure_error(policy: Policy, outcome: Outcome, reason: str, attempts: int) -> GatewayError:
    tries = f"after {attempts} attempt{'s' if attempts > 1 else ''}"
    if outcome.failure == "timeout":
        return UpstreamTimeout(f"{policy.vendor} did not answer in {policy.timeout:g}s {tries}", vendor=policy.vendor)
    failed = "gave no usable answer" if outcome.sent else "could not be reached"
    return UpstreamUnavailable(f"{policy.vendor} {failed} {tries}: {reason}", vendor=policy.vendor)
