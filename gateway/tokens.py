"""OAuth2 and JWT-bearer access tokens that never expire on a caller.

One TokenProvider per vendor. Its states::

    empty ──refresh──> valid ──(refresh_at)──> refreshing ──> valid
      │                  │                          │
      └──refused/failed──┴──────────────────────────┴──> failing (503 at once while no
                                                          valid token; retried with backoff)

- Refreshes run beside the traffic: once the first request has asked for a token, a
  background task wakes ``refresh_before`` each expiry, so callers never wait while a
  valid token exists.
- Single flight: within a process one refresh task is shared by everyone who needs it;
  across processes a storage lock with a fencing token lets one refresh at a time, and
  whoever takes the lock re-reads the store first, since another process may have just
  refreshed.
- A rotated refresh token is adopted at once, then stored before the lock is released,
  compare-and-set against what was read (a holder whose lock expired while it paused
  cannot overwrite a newer chain). A token that could not be stored stays in the process
  and is stored at its next refresh. A restart reads the chain back, not the configured
  (dead) refresh token; with the store down, only a chain the process holds is used.
- ``invalid_grant`` may only mean that another process rotated the refresh token a moment
  ago: the store is re-read before the credential is declared dead.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import aiohttp
import jwt
import orjson
from multidict import CIMultiDict

from gateway.config.model import JwtBearer, OAuth2
from gateway.core.clock import iso_utc
from gateway.core.tokens import TokenEndpointError, TokenRecord, failure_delay, parse_token_response
from gateway.errors import CredentialsUnavailable, StorageError
from gateway.metrics import Metrics
from gateway.sealing import Sealer
from gateway.storage import Storage

log = logging.getLogger("gateway.tokens")

LOCK_TTL = 15.0  # longer than a token request may take (TOKEN_TIMEOUT)
TOKEN_TIMEOUT = 10.0
FORCED_REFRESH_GAP = 30.0  # a token fetched after a 401 is not replaced again within this
POLL = 0.05  # how often a process waiting for another's refresh looks at the store


class TokenProvider:
    def __init__(
        self,
        vendor: str,
        spec: OAuth2 | JwtBearer,
        storage: Storage,
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
        self._session = session
        self._sealer = sealer
        self._metrics = metrics
        self._clock = clock
        self._sleep = sleep
        configured = spec.refresh_token.reveal() if isinstance(spec, OAuth2) and spec.refresh_token else ""
        # Which configured credential a stored chain grew from: a new one configured by the
        # operator starts a new chain instead of reviving the stored one.
        self._origin = hashlib.sha256(f"{spec.type}\0{spec.token_url}\0{configured}".encode()).hexdigest()[:16]
        self._token: TokenRecord | None = None
        self._inflight: asyncio.Task[TokenRecord] | None = None
        self._failures = 0
        self._retry_at = 0.0
        self._last_error: str | None = None
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

    def status(self) -> dict[str, Any]:
        now = self._clock()
        state = "empty"
        if self._token is not None and self._token.usable(now):
            state = "valid"
        if self._inflight is not None:
            state = "refreshing"
        if self._last_error is not None and (self._token is None or not self._token.usable(now)):
            state = "failing"
        return {
            "type": self.spec.type,
            "state": state,
            "expires_at": iso_utc(self._token.expires_at) if self._token else None,
            "last_error": self._last_error,
            "next_attempt_at": iso_utc(self._retry_at) if self._retry_at > now else None,
        }

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        self._keeper = asyncio.create_task(self._keep_fresh(), name=f"tokens:{self.vendor}")

    async def stop(self) -> None:
        for task in (self._keeper, self._inflight):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    async def _keep_fresh(self) -> None:
        # Nothing is fetched before the first request for this vendor: a gateway started
        # with placeholder or unused credentials does not call token endpoints by itself.
        await self._wanted.wait()
        while True:
            now = self._clock()
            wake = now if self._token is None else self._token.refresh_at(self.spec.refresh_before)
            wake = max(wake, self._retry_at)
            await self._sleep(max(0.0, wake - now))
            try:
                await self._refresh()
            except CredentialsUnavailable:
                pass  # logged and counted where it failed; _retry_at paces the next try
            except Exception:
                # The keeper must outlive any surprise, or tokens would only be fetched on demand.
                log.exception("%s: token keeper failed; trying again shortly", self.vendor)
                await self._sleep(POLL * 20)

    # -- refreshing --------------------------------------------------------------------

    async def _valid_token(self) -> TokenRecord:
        self._wanted.set()
        now = self._clock()
        if self._token is not None and self._token.usable(now):
            return self._token
        if self._retry_at > now:
            raise self._unavailable(self._retry_at - now)
        return await self._refresh()

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
            log.warning("%s: shared token store unavailable: %s", self.vendor, exc)
            return await self._refresh_alone(stale, exc)

    async def _refresh_shared(self, stale: str | None) -> TokenRecord:
        fence = await self._take_lock(stale)
        if isinstance(fence, TokenRecord):
            return fence
        try:
            return await self._exchange_and_keep(stale)
        finally:
            try:
                await self._storage.unlock_refresh(self.vendor, fence)
            except StorageError as exc:
                log.warning("%s: refresh lock not released (it expires by itself): %s", self.vendor, exc)

    async def _refresh_alone(self, stale: str | None, cause: StorageError) -> TokenRecord:
        """Storage is down. Refresh only from a chain this process holds: the configured
        refresh token may be dead already, and replaying a rotated-out refresh token can get
        the whole chain revoked (RFC 9700 4.14.2). The new token is stored later."""
        own = self._token
        if self._uses_refresh_token() and (own is None or not own.refresh_token):
            raise self._fail(TokenEndpointError(f"shared token store unavailable ({cause})", refused=False))
        record = await self._exchange_or_fail(own.refresh_token if own else None, stored=None)
        self._adopt(record)
        self._refreshed(record)
        return record

    async def _take_lock(self, stale: str | None) -> int | TokenRecord:
        """Our fence, or the fresh record another process stored while we waited."""
        deadline = self._clock() + LOCK_TTL
        while True:
            fence = await self._storage.lock_refresh(self.vendor, LOCK_TTL)
            if fence is not None:
                return fence
            raw = await self._storage.get_token(self.vendor)
            fresh = self._fresh(self._open(raw), stale)
            if fresh is not None:
                self._adopt(fresh)
                return fresh
            if self._clock() > deadline:
                raise self._fail(TokenEndpointError("another process's token refresh did not finish", refused=False))
            await self._sleep(POLL)

    def _fresh(self, record: TokenRecord | None, stale: str | None) -> TokenRecord | None:
        """``record`` if it is neither due for refresh nor the token the vendor rejected."""
        if record is None or record.access_token == stale or record.due(self._clock(), self.spec.refresh_before):
            return None
        return record

    async def _exchange_and_keep(self, stale: str | None) -> TokenRecord:
        """Under the lock: adopt what another process stored, or refresh and store."""
        raw = await self._storage.get_token(self.vendor)
        stored = self._open(raw)
        fresh = self._fresh(stored, stale)
        if fresh is not None:  # another process refreshed already
            self._adopt(fresh)
            return fresh
        newest = self._newest(stored)
        if newest is self._token and self._fresh(newest, stale) is not None:
            assert newest is not None  # ours is newer than the store (it could not be saved before)
            await self._save(newest, raw)
            return newest
        record = await self._exchange_or_fail(newest.refresh_token if newest else None, stored=stored)
        # Adopted before it is stored: a rotated refresh token must never exist only in flight.
        self._adopt(record)
        await self._save(record, raw)
        self._refreshed(record)
        return record

    async def _exchange_or_fail(self, known_refresh: str | None, stored: TokenRecord | None) -> TokenRecord:
        refresh_token = self._refresh_token(known_refresh)
        try:
            return await self._exchange(refresh_token)
        except TokenEndpointError as exc:
            if exc.refused:
                # A refresh token another process rotated a moment ago is refused too: if the
                # store moved on since we read it, that is a lost race, not a dead credential.
                again = await self._read()
                if again is not None and again.refresh_token != refresh_token and again.usable(self._clock()):
                    self._adopt(again)
                    return again
            raise self._fail(exc) from None

    def _newest(self, stored: TokenRecord | None) -> TokenRecord | None:
        """The latest link of the chain this process knows: the store's or its own."""
        own = self._token
        if own is None or (stored is not None and stored.issued_at >= own.issued_at):
            return stored
        return own

    async def _save(self, record: TokenRecord, previous: bytes | None) -> None:
        """Store ``record`` unless the store changed since ``previous`` was read."""
        value = self._sealer.seal(orjson.dumps(record.to_json()))
        try:
            if not await self._storage.put_token(self.vendor, value, previous):
                log.warning("%s: another process stored a token meanwhile; ours stays in this process", self.vendor)
        except StorageError as exc:
            log.warning("%s: new token not stored (%s); kept here and stored at the next refresh", self.vendor, exc)

    def _refreshed(self, record: TokenRecord) -> None:
        self._metrics.credential_refreshes.labels(self.vendor, "ok").inc()
        log.info("%s: access token refreshed, valid for %.0fs", self.vendor, record.expires_at - record.issued_at)

    def _uses_refresh_token(self) -> bool:
        return isinstance(self.spec, OAuth2) and self.spec.grant == "refresh_token"

    def _refresh_token(self, known: str | None) -> str | None:
        if not self._uses_refresh_token():
            return None
        if known:
            return known
        assert isinstance(self.spec, OAuth2) and self.spec.refresh_token is not None
        return self.spec.refresh_token.reveal()

    async def _read(self) -> TokenRecord | None:
        return self._open(await self._storage.get_token(self.vendor))

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
        self._token = record
        self._failures = 0
        self._retry_at = 0.0
        self._last_error = None

    def _fail(self, exc: TokenEndpointError) -> CredentialsUnavailable:
        self._failures += 1
        delay = failure_delay(self._failures, exc.refused)
        self._retry_at = self._clock() + delay
        self._last_error = str(exc)
        self._metrics.credential_refreshes.labels(self.vendor, "error").inc()
        log.error("%s: token refresh failed: %s; next attempt in %.0fs", self.vendor, exc, delay)
        return self._unavailable(delay)

    def _unavailable(self, retry_after: float) -> CredentialsUnavailable:
        return CredentialsUnavailable(
            f"no valid {self.spec.type} token for {self.vendor}: {self._last_error or 'not fetched yet'}",
            vendor=self.vendor,
            retry_after=retry_after,
        )

    # -- the token endpoint ------------------------------------------------------------

    async def _exchange(self, refresh_token: str | None) -> TokenRecord:
        form, headers = self._grant(refresh_token)
        now = self._clock()
        try:
            async with self._session.post(
                self.spec.token_url,
                data=form,
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=TOKEN_TIMEOUT),
            ) as response:
                raw = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TokenEndpointError(f"token endpoint unreachable: {type(exc).__name__}", refused=False) from None
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        return parse_token_response(status, body, now, refresh_token, self._origin)

    def _grant(self, refresh_token: str | None) -> tuple[dict[str, str], dict[str, str]]:
        spec = self.spec
        headers = {"Accept": "application/json"}
        if isinstance(spec, JwtBearer):
            form = {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": self._assertion()}
            if spec.scope:
                form["scope"] = spec.scope
            return form, headers
        if spec.grant == "refresh_token":
            assert refresh_token is not None
            form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        else:
            form = {"grant_type": "client_credentials"}
        if spec.scope:
            form["scope"] = spec.scope
        secret = spec.client_secret.reveal()
        if spec.auth_method == "client_secret_basic":
            # RFC 6749 2.3.1: both parts form-urlencoded before base64.
            pair = f"{quote(spec.client_id, safe='')}:{quote(secret, safe='')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
        else:
            form["client_id"] = spec.client_id
            form["client_secret"] = secret
        return form, headers

    def _assertion(self) -> str:
        spec = self.spec
        assert isinstance(spec, JwtBearer)
        now = int(self._clock())
        claims = {
            "iss": spec.issuer,
            "sub": spec.subject or spec.issuer,
            "aud": spec.audience,
            "iat": now,
            "exp": now + int(spec.lifetime),
            "jti": uuid.uuid4().hex,
        }
        try:
            return jwt.encode(claims, spec.private_key.reveal(), algorithm=spec.algorithm)
        except (ValueError, TypeError, jwt.PyJWTError) as exc:
            raise TokenEndpointError(
                f"private_key cannot sign {spec.algorithm}: {type(exc).__name__}", refused=True
            ) from None

