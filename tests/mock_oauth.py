"""A mock OAuth2 authorization server and a protected API that checks its tokens.

It issues short-lived tokens, rotates refresh tokens (a used one dies), checks client
authentication and JWT assertions, and fails on demand. It counts replays: refreshes with
a refresh token it had already rotated away, which a vendor with reuse detection (RFC 9700
4.14.2) would answer by revoking the whole grant.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import jwt
from aiohttp import web


@dataclass
class TokenServer:
    client_id: str = "client-1"
    client_secret: str = "client-secret-1"
    lifetime: float = 3600.0
    rotate: bool = True
    auth_method: str = "client_secret_post"
    public_key: Any = None
    audience: str = "https://auth.example/token"
    live_refresh_tokens: set[str] = field(default_factory=lambda: {"refresh-0"})
    rotated_away: set[str] = field(default_factory=set)
    replays: int = 0
    refusals: int = 0
    issued: dict[str, float] = field(default_factory=dict)
    requests: list[dict[str, str]] = field(default_factory=list)
    failures: deque[tuple[int, dict[str, Any]]] = field(default_factory=deque)
    rejected_401: int = 0
    delay: float = 0.0  # seconds each token request takes
    served: int = 0
    _numbers: Any = field(default_factory=lambda: itertools.count(1))

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/token", self.token)
        app.router.add_route("*", "/api/{tail:.*}", self.api)
        return app

    def fail_next(self, status: int, error: str) -> None:
        self.failures.append((status, {"error": error}))

    def revoke_access_tokens(self) -> None:
        self.issued.clear()

    async def token(self, request: web.Request) -> web.Response:
        form = dict(await request.post())
        self.requests.append({**{k: str(v) for k, v in form.items()}, "authorization": request.headers.get("Authorization", "")})
        await asyncio.sleep(self.delay)
        if self.failures:
            status, body = self.failures.popleft()
            return web.json_response(body, status=status)
        grant = form.get("grant_type")
        if grant == "urn:ietf:params:oauth:grant-type:jwt-bearer":
            try:
                jwt.decode(str(form.get("assertion")), self.public_key, algorithms=["RS256", "ES256"], audience=self.audience)
            except jwt.PyJWTError as exc:
                return web.json_response({"error": "invalid_grant", "error_description": str(exc)}, status=400)
            return self._issue(None)
        if not self._client_ok(request, form):
            return web.json_response({"error": "invalid_client"}, status=401)
        if grant == "client_credentials":
            return self._issue(None)
        if grant == "refresh_token":
            used = str(form.get("refresh_token"))
            if used not in self.live_refresh_tokens:
                self.replays += used in self.rotated_away
                self.refusals += 1
                return web.json_response({"error": "invalid_grant"}, status=400)
            new = used
            if self.rotate:
                self.live_refresh_tokens.discard(used)
                self.rotated_away.add(used)
                new = f"refresh-{next(self._numbers)}"
                self.live_refresh_tokens.add(new)
            return self._issue(new)
        return web.json_response({"error": "unsupported_grant_type"}, status=400)

    def _client_ok(self, request: web.Request, form: dict[str, Any]) -> bool:
        if self.auth_method == "client_secret_basic":
            scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
            if scheme != "Basic":
                return False
            user, _, password = base64.b64decode(encoded).decode().partition(":")
            return (unquote(user), unquote(password)) == (self.client_id, self.client_secret)
        return (form.get("client_id"), form.get("client_secret")) == (self.client_id, self.client_secret)

    def _issue(self, refresh_token: str | None) -> web.Response:
        token = f"access-{next(self._numbers)}"
        self.issued[token] = time.time() + self.lifetime
        body: dict[str, Any] = {"access_token": token, "token_type": "Bearer", "expires_in": self.lifetime}
        if refresh_token is not None:
            body["refresh_token"] = refresh_token
        return web.json_response(body)

    async def api(self, request: web.Request) -> web.Response:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if self.issued.get(token, 0) <= time.time():
            self.rejected_401 += 1
            return web.json_response({"error": "expired or unknown token"}, status=401)
        self.served += 1
        return web.json_response({"ok": True})
