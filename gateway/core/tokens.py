"""When to refresh an access token, and how long to wait after a failed refresh.

Times are epoch seconds (tokens are shared between processes, so wall-clock time).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# A token this close to its expiry is not sent: it could expire on the way.
EXPIRY_MARGIN = 1.0
# Vendors that omit expires_in (Salesforce does) get this lifetime; a 401 refreshes sooner.
DEFAULT_LIFETIME = 3600.0

REFUSED_BACKOFF = (30.0, 600.0)  # first delay, cap: the grant was refused
TRANSIENT_BACKOFF = (1.0, 30.0)  # the token endpoint failed or could not be reached


@dataclass(frozen=True)
class TokenRecord:
    """What processes share about a vendor's token (secret: never logged)."""

    access_token: str
    issued_at: float
    expires_at: float
    refresh_token: str | None = None
    origin: str = ""  # fingerprint of the configured credential the chain started from

    def usable(self, now: float) -> bool:
        return now < self.expires_at - EXPIRY_MARGIN

    def refresh_at(self, refresh_before: float) -> float:
        """When to refresh: ``refresh_before`` ahead of expiry, but never in the first half
        of the token's life (a 3-second token with refresh_before 5m would loop)."""
        lifetime = self.expires_at - self.issued_at
        return self.expires_at - min(refresh_before, lifetime / 2)

    def due(self, now: float, refresh_before: float) -> bool:
        return now >= self.refresh_at(refresh_before)

    def to_json(self) -> dict[str, Any]:
        return {
            "access_token": self.access_token,
            "issued_at": self.issued_at,
            "expires_at": self.expires_at,
            "refresh_token": self.refresh_token,
            "origin": self.origin,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TokenRecord:
        return cls(
            access_token=str(data["access_token"]),
            issued_at=float(data["issued_at"]),
            expires_at=float(data["expires_at"]),
            refresh_token=data.get("refresh_token"),
            origin=str(data.get("origin", "")),
        )


class TokenEndpointError(Exception):
    """The token endpoint did not give a token. ``refused``: it rejected the grant itself
    (invalid_grant and friends), as opposed to failing or being unreachable. The message
    is safe to show: it carries the OAuth error code, never a secret."""

    def __init__(self, message: str, *, refused: bool) -> None:
        super().__init__(message)
        self.refused = refused


_REFUSALS = frozenset({"invalid_grant", "invalid_client", "unauthorized_client", "unsupported_grant_type", "invalid_scope"})


def parse_token_response(status: int, body: object, now: float, previous_refresh: str | None, origin: str) -> TokenRecord:
    """The record for a token endpoint's answer, or TokenEndpointError (RFC 6749 5.1, 5.2)."""
    if not isinstance(body, dict):
        raise TokenEndpointError(f"token endpoint answered {status} without a JSON object", refused=False)
    if status != 200:
        code = body.get("error")
        refused = status in (400, 401) and (code in _REFUSALS or code is None)
        name = code if isinstance(code, str) and len(code) < 64 else "no error code"
        raise TokenEndpointError(f"token endpoint answered {status} ({name})", refused=refused)
    token = body.get("access_token")
    if not isinstance(token, str) or not token:
        raise TokenEndpointError("token endpoint answered 200 without an access_token", refused=False)
    expires_in = body.get("expires_in")
    if isinstance(expires_in, str) and expires_in.isdigit():
        expires_in = int(expires_in)  # some vendors send it as a string
    lifetime = float(expires_in) if isinstance(expires_in, int | float) and expires_in > 0 else DEFAULT_LIFETIME
    rotated = body.get("refresh_token")
    return TokenRecord(
        access_token=token,
        issued_at=now,
        expires_at=now + lifetime,
        refresh_token=rotated if isinstance(rotated, str) and rotated else previous_refresh,
        origin=origin,
    )


def failure_delay(failures: int, refused: bool) -> float:
    """Seconds before refresh attempt number ``failures + 1`` after ``failures`` in a row."""
    first, cap = REFUSED_BACKOFF if refused else TRANSIENT_BACKOFF
    return min(cap, first * 2.0 ** max(0, failures - 1))
