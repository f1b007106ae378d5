"""Asking a vendor's token endpoint for an access token: the grant's form, the client's
authentication (RFC 6749 2.3.1), the JWT assertion (RFC 7523), and reading the answer.
Secrets go only into the request; errors carry the OAuth error code, never a secret."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable
from urllib.parse import quote

import aiohttp
import jwt
import orjson

from gateway.config.model import JwtBearer, OAuth2
from gateway.core.tokens import TokenEndpointError, TokenRecord, parse_token_response

TOKEN_TIMEOUT = 10.0


class TokenEndpoint:
    """One vendor's token endpoint, asked with the grant its policy configures."""

    def __init__(
        self, spec: OAuth2 | JwtBearer, session: aiohttp.ClientSession, origin: str, clock: Callable[[], float]
    ) -> None:
        self.spec = spec
        self._session = session
        self._origin = origin  # stamped on every record, see TokenRecord.origin
        self._clock = clock

    async def exchange(self, refresh_token: str | None) -> TokenRecord:
        """A new token (``refresh_token`` for the refresh grant), or TokenEndpointError."""
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

