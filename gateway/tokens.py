"""OAuth2 and JWT-bearer access tokens that never expire on a caller.

One TokenProvider per vendor: the driver of gateway.core.tokens, whose ``plan`` says from
what storage and the process hold whether to adopt the stored token, store ours, rotate
or wait, and which (see there) keeps a rotating refresh token from ever being replayed,
storage down or not. Its states::

    empty ──refresh──> valid ──(refresh_at)──> refreshing ──> valid
      │                  │                          │
      └──refused/failed/waiting──┴──────────────────┴──> failing (503 at once while no
                                                           valid token; retried with backoff)

- Refreshes run beside the traffic: once the first request has asked for a token, a
  background task wakes ``refresh_before`` each expiry, so callers never wait while a
  valid token exists.
- Single flight: within a process one refresh task is shared by everyone who needs it;
  across processes a storage lock lets one refresh at a time, and the stored record, read
  again under it, says whether another process has just refreshed or is rotating.
- A rotated refresh token is adopted at once, then stored compare-and-set against what
  was read. One that could not be stored stays in the process, which puts it back as soon
  as storage answers (looking every STORAGE_RETRY). A restart reads the chain back, not
  the configured (dead) refresh token.
- With storage down a process keeps its access token while it is valid, then answers 503
  ``credentials-unavailable`` without calling the token endpoint, unless it holds the
  newest link (only then does it refresh alone). No storage failure becomes a 500.
- ``invalid_grant`` is marked in the stored record, so no process sends that link again
  before the backoff; it may also mean that another process rotated a moment ago, so the
  store is read again first. A process that is backing off reads the store at most once a
  STORAGE_RETRY and takes a valid token another process stored.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson
from multidict import CIMultiDict

from gateway.config.model import JwtBearer, OAuth2
from gateway.core.clock import iso_utc
from gateway.core.tokens import (
    RECOVERY_GRACE,
    STORAGE_RETRY,
    Adopt,
    Held,
    Rotate,
    Store,
    TokenEndpointError,
    TokenRecord,
    Wait,
    failure_delay,
    plan,
)
from gateway.errors import CredentialsUnavailable, StorageError
from gateway.metrics import Metrics
from gateway.token_encryption import Sealer
from gateway.storage import TokenStore
from gateway.token_endpoint import TOKEN_TIMEOUT, TokenEndpoint

log = logging.getLogger("gateway.tokens")

LOCK_TTL = TOKEN_TIMEOUT + 5.0  # longer than a token request may take
FORCED_REFRESH_GAP = 30.0  # a token fetched after a 401 is not replaced again within this
POLL = 0.05  # how often a process waiting for another's refresh looks at the store


class TokenProvider:
    def __init__(
        self,
        vendor: str,
        spec: OAuth2 | JwtBearer,
        storage: TokenStore,
        session: aiohttp.ClientSession,
        sealer: Sealer,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.vendor = vendor
        self.spec = spec
        self._storage = storage
        self._shared = storage.name != "memory"  # memory storage is one process's own
        self._sealer = sealer
        self._metrics = metrics
        self._clock = clock
        self._sleep = sleep
        configured = spec.refresh_token.reveal() if isinstance(spec, OAuth2) and spec.refresh_token else ""
        # Which configured credential a stored chain grew from: a new one configured by the
        # operator starts a new chain instead of reviving the stored one.
        self._origin = hashlib.sha256(f"{spec.type}\0{spec.token_url}\0{configured}".encode()).hexdigest()[:16]
        chain = isinstance(spec, OAuth2) and spec.grant == "refresh_token"
        self._seed = TokenRecord("", 0.0, 0.0, configured, self._origin) if chain else None
        self._endpoint = TokenEndpoint(spec, session, self._origin, clock)
        self._me = uuid.uuid4().hex[:12]  # names this process in the marks it stores
        self._held = Held()
        self._inflight: asyncio.Task[TokenRecord] | None = None
        self._sending = False  # the in-flight refresh is asking the token endpoint
        self._failures = 0
        self._retry_at = 0.0
        self._next_look = 0.0
        self._last_error: str | None = None
        self._storage_down = False
        self._recovering_until = 0.0
        self._keeper: asyncio.Task[None] | None = None
        self._wanted = asyncio.Event()  # set by the first request that needs a token
        self._forced: tuple[str, float] = ("", 0.0)  # the last token fetched because of a 401, and when

    # -- what the pipeline calls ------------------------------------------------------

    async def apply(self, headers: CIMultiDict[str], query: str | None) -> str | None:
        token = await self._valid_token()
        headers["Authorization"] = f"Bearer {token.access_token}"
        return query

    async def rejected(self, headers: CIMultiDict[str]) -> bool:
        """The vendor answered 401 to ``headers``' token: refresh once; True if a retry may help."""
        sent = headers.get("Authorization", "").removeprefix("Bearer ")
        now = self._clock()
        if self._retry_at > now:
            return False  # backing off: a 401 is no reason to ask the token endpoint sooner
        if sent == self._forced[0] and now - self._forced[1] < FORCED_REFRESH_GAP:
            # A token fetched because of a 401 moments ago is refused too: the vendor means
            # something else (a missing scope, say). Refreshing again would only burn grants.
            return False
        try:
            record = await self._refresh(stale=sent)
        except CredentialsUnavailable:
            return False
        self._forced = (record.access_token, now)
        return True

    def failing(self) -> bool:
        """Whether status() says "failing" (for gateway_credential_state)."""
        return bool(self.status()["state"] == "failing")

    def status(self) -> dict[str, Any]:
        now = self._clock()
        token = self._held.record
        usable = token is not None and token.usable(now)
        state = "valid" if usable else "empty"
        if self._inflight is not None:
            state = "refreshing"
        if self._last_error is not None and not usable:
            state = "failing"
        return {
            "type": self.spec.type,
            "state": state,
            "expires_at": iso_utc(token.expires_at) if token is not None and token.expires_at else None,
            "last_error": self._last_error,
            "next_attempt_at": iso_utc(self._retry_at) if self._retry_at > now else None,
        }

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        self._keeper = asyncio.create_task(self._keep_fresh(), name=f"tokens:{self.vendor}")

    async def stop(self) -> None:
        if self._keeper is not None:
            self._keeper.cancel()
            await asyncio.gather(self._keeper, return_exceptions=True)
        inflight = self._inflight
        if inflight is not None:
            if self._sending:
                # A rotation is let finish and store its link: cut off, it would leave its
                # mark on the stored link, and others would wait INTENT_TTL for a link nobody holds.
                await asyncio.wait([inflight], timeout=LOCK_TTL)
            inflight.cancel()
            await asyncio.gather(inflight, return_exceptions=True)

    async def _keep_fresh(self) -> None:
        # Nothing is fetched before the first request for this vendor: a gateway started
        # with placeholder or unused credentials does not call token endpoints by itself.
        await self._wanted.wait()
        while True:
            now = self._clock()
            token = self._held.record
            wake = now if token is None else token.refresh_at(self.spec.refresh_before)
            if self._held.made:
                wake = min(wake, now + STORAGE_RETRY)  # stored as soon as storage answers
            await self._sleep(max(0.0, max(wake, self._retry_at) - now))
            try:
                await self._refresh()
            except CredentialsUnavailable:
                pass  # logged and counted where it failed; _retry_at paces the next try
            except Exception:
                # The keeper must outlive any surprise, or tokens would only be fetched on demand.
                log.exception("%s: token keeper failed; trying again shortly", self.vendor)
                await self._sleep(STORAGE_RETRY)

    # -- refreshing --------------------------------------------------------------------

    async def _valid_token(self) -> TokenRecord:
        self._wanted.set()
        now = self._clock()
        token = self._held.record
        if token is not None and token.usable(now):
            return token
        if self._retry_at > now:
            looked = await self._look(now)
            if looked is None:
                raise self._unavailable(self._retry_at - now)
            return looked
        return await self._refresh()

    async def _look(self, now: float) -> TokenRecord | None:
        """While backing off: a usable token another process stored (storage read at most
        once a STORAGE_RETRY), so that storage answering again ends every process's wait."""
        if now < self._next_look:
            return None
        self._next_look = now + STORAGE_RETRY
        try:
            stored = await self._read()
        except StorageError as exc:
            self._storage_failed(exc)
            return None
        if stored is None or not self._held.adoptable(stored, now):
            return None
        self._adopt(stored)
        return stored

    async def _refresh(self, stale: str | None = None) -> TokenRecord:
        """Single flight: whoever comes while a refresh runs waits for that one."""
        if self._inflight is None:
            self._inflight = asyncio.create_task(self._refresh_once(stale))
            self._inflight.add_done_callback(self._refresh_done)
        return await asyncio.shield(self._inflight)

    def _refresh_done(self, task: asyncio.Task[TokenRecord]) -> None:
        self._inflight = None
        if not task.cancelled():
            task.exception()  # retrieved here so an unawaited failure is not reported twice

    async def _refresh_once(self, stale: str | None) -> TokenRecord:
        try:
            return await self._refresh_shared(stale)
        except StorageError as exc:
            self._storage_failed(exc)
            return await self._refresh_alone(stale)

    async def _refresh_shared(self, stale: str | None) -> TokenRecord:
        """Follow ``plan`` until it gives a token; every StorageError comes from before
        anything was sent to the token endpoint (the caller then decides alone)."""
        deadline = self._clock() + LOCK_TTL
        while True:
            raw = await self._storage.get_token(self.vendor)
            self._storage_answers()
            now = self._clock()
            step = plan(
                self._open(raw), self._held, now, me=self._me, seed=self._seed,
                refresh_before=self.spec.refresh_before, stale=stale, shared=self._shared,
                recovering_until=self._recovering_until,
            )
            match step:
                case Adopt(record):
                    self._adopt(record)
                    return record
                case Store(record):
                    if await self._storage.put_token(self.vendor, self._seal(record), raw):
                        self._held = Held(record)
                case Wait(until, reason, follow, adopt):
                    if adopt is not None and self._held.adoptable(adopt, now):
                        self._adopt(adopt)
                    if not follow:
                        raise self._waiting(reason, until)
                    if now > deadline:
                        raise self._waiting("another process's token refresh did not finish", now + STORAGE_RETRY)
                    await self._sleep(POLL)
                case Rotate(base):
                    fence = await self._storage.lock_refresh(self.vendor, LOCK_TTL)
                    if fence is None:  # another process is at it: see what it stores
                        if now > deadline:
                            raise self._waiting("another process's token refresh did not finish", now + STORAGE_RETRY)
                        await self._sleep(POLL)
                        continue
                    try:
                        if await self._storage.get_token(self.vendor) == raw:
                            rotated = await self._rotate(base, raw)
                            if rotated is not None:
                                return rotated
                    finally:
                        await self._unlock(fence)

    async def _rotate(self, base: TokenRecord | None, raw: bytes | None) -> TokenRecord | None:
        """Under the lock: the next token from ``base``'s refresh token; None if the stored
        record changed before our mark took (plan again)."""
        if base is not None:
            marked = self._seal(base.rotating(self._me, self._clock()))
            if not await self._storage.put_token(self.vendor, marked, raw):
                return None
            self._held = Held(base, started_at=self._clock())
            raw = marked
        # From here on storage failures are caught: the token endpoint is being asked.
        self._sending = True
        try:
            try:
                answer = await self._endpoint.exchange(base.refresh_token if base is not None else None)
            except TokenEndpointError as exc:
                return await self._rotation_failed(exc, base, raw)
            record = base.next_link(answer) if base is not None else answer
            self._made(record)
            await self._save(record, raw)
        finally:
            self._sending = False
        self._refreshed(record)
        return record

    async def _rotation_failed(self, exc: TokenEndpointError, base: TokenRecord | None, raw: bytes | None) -> TokenRecord:
        now = self._clock()
        if exc.refused:
            # A refresh token another process rotated a moment ago is refused too: if the
            # store moved on since we read it, that is a lost race, not a dead credential.
            again = await self._read_quietly()
            if again is not None and again.refresh_token != (base.refresh_token if base else None) and again.usable(now):
                self._adopt(again)
                return again
        if base is None:
            raise self._fail(exc)
        # The mark comes off; a refusal stays on the link, so that no process sends it
        # again before the backoff.
        after = base.refused_now(now, str(exc)) if exc.refused else base.settled()
        try:
            await self._storage.put_token(self.vendor, self._seal(after), raw)
        except StorageError as err:
            self._storage_failed(err)
            if not exc.refused:
                raise self._fail(exc) from None  # our mark stays: the link is still ours to retry
        self._held = Held(base)
        raise self._fail(exc, after.refusals if exc.refused else None)

    async def _refresh_alone(self, stale: str | None) -> TokenRecord:
        """Storage is down: a new token only where ``Held.may_rotate_alone`` says this
        process holds the newest link; it is stored once storage answers."""
        now = self._clock()
        own = self._held.record
        if own is not None and own.fresh(now, self.spec.refresh_before, stale):
            return own
        if not self._held.may_rotate_alone(now, chain=self._seed is not None, shared=self._shared):
            why = "the shared token store is unavailable and another process may hold the newest refresh token"
            raise self._waiting(why, now + STORAGE_RETRY)
        base = own if self._seed is not None else None
        try:
            answer = await self._endpoint.exchange(base.refresh_token if base is not None else None)
        except TokenEndpointError as exc:
            raise self._fail(exc) from None
        record = base.next_link(answer) if base is not None else answer
        self._made(record)
        self._refreshed(record)
        return record

    async def _save(self, record: TokenRecord, previous: bytes | None) -> None:
        """Store ``record`` unless the store changed since ``previous`` was read."""
        try:
            stored = await self._storage.put_token(self.vendor, self._seal(record), previous)
        except StorageError as exc:
            self._storage_failed(exc)
            return
        if stored:
            self._held = Held(record)
        else:
            log.warning("%s: another process stored a token meanwhile; ours is stored when it is newer", self.vendor)

    async def _unlock(self, fence: int) -> None:
        try:
            await self._storage.unlock_refresh(self.vendor, fence)
        except StorageError as exc:
            self._storage_failed(exc)  # the lock expires by itself

    def _storage_failed(self, exc: StorageError) -> None:
        if not self._storage_down:
            self._storage_down = True
            log.warning("%s: shared token store unavailable (%s); tokens are kept in this process", self.vendor, exc)

    def _storage_answers(self) -> None:
        if self._storage_down:
            self._storage_down = False
            self._recovering_until = self._clock() + RECOVERY_GRACE
            log.info("%s: shared token store answers again", self.vendor)

    def _refreshed(self, record: TokenRecord) -> None:
        self._metrics.credential_refreshes.labels(self.vendor, "ok").inc()
        log.info("%s: access token refreshed, valid for %.0fs", self.vendor, record.expires_at - record.issued_at)

    async def _read(self) -> TokenRecord | None:
        record = self._open(await self._storage.get_token(self.vendor))
        self._storage_answers()
        return record

    async def _read_quietly(self) -> TokenRecord | None:
        try:
            return await self._read()
        except StorageError as exc:
            self._storage_failed(exc)
            return None

    def _seal(self, record: TokenRecord) -> bytes:
        return self._sealer.seal(orjson.dumps(record.to_json()))

    def _open(self, raw: bytes | None) -> TokenRecord | None:
        if raw is None:
            return None
        opened = self._sealer.open(raw)
        if opened is None:
            log.warning("%s: stored token cannot be opened (secret_key changed?); ignoring it", self.vendor)
            return None
        record = TokenRecord.from_json(orjson.loads(opened))
        return record if record.origin == self._origin else None

    def _adopt(self, record: TokenRecord) -> None:
        self._held = Held(record)
        self._cleared()

    def _made(self, record: TokenRecord) -> None:
        self._held = Held(record, made=True)
        self._cleared()

    def _cleared(self) -> None:
        self._failures = 0
        self._retry_at = 0.0
        self._last_error = None

    def _fail(self, exc: TokenEndpointError, failures: int | None = None) -> CredentialsUnavailable:
        """A failed token request: backed off, by the stored count of refusals where there is one."""
        self._failures = failures if failures is not None else self._failures + 1
        delay = failure_delay(self._failures, exc.refused)
        self._retry_at = self._clock() + delay
        self._last_error = str(exc)
        self._metrics.credential_refreshes.labels(self.vendor, "error").inc()
        log.error("%s: token refresh failed: %s; next attempt in %.0fs", self.vendor, exc, delay)
        return self._unavailable(delay)

    def _waiting(self, reason: str, until: float) -> CredentialsUnavailable:
        """No token request now (plan or storage says so): nothing failed, nothing counted."""
        self._retry_at = until
        self._last_error = reason
        return self._unavailable(until - self._clock())

    def _unavailable(self, retry_after: float) -> CredentialsUnavailable:
        return CredentialsUnavailable(
            f"no valid {self.spec.type} token for {self.vendor}: {self._last_error or 'not fetched yet'}",
            vendor=self.vendor,
            retry_after=retry_after,
        )
