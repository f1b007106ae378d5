"""A vendor's token and its refresh-token chain: when to refresh, who may, and how long
to wait after a failed refresh.

Times are epoch seconds (tokens are shared between processes, so wall-clock time).

A rotating refresh token dies when it is used; sending a dead one again is a replay, and a
vendor with reuse detection revokes the whole grant for it (RFC 9700 4.14.2). So a process
sends a refresh token only when it knows it holds the newest link of the chain:

- with storage answering: the stored link, once storage has taken its mark "being rotated
  by me" (compare and set, so one process rotates each link); or a newer link it holds,
  once it has put that back into storage (a rotation storage missed, or a Redis that came
  back empty: the highest generation wins);
- with storage down: only a link it rotated itself and storage never saw (nobody else has
  that refresh token), or one it marked for rotation moments before (others leave a marked
  link alone for INTENT_TTL). A link read from storage may have been rotated since by
  another process: it is never sent while storage is down;
- after an outage: nothing for RECOVERY_GRACE, so that a process holding a link storage
  missed has put it back first. (An empty store and no link held is a new chain, from the
  configured refresh token: a process started while Redis is empty cannot know better.)

``plan`` decides with storage answering, ``Held.may_rotate_alone`` without it; the
provider (gateway.tokens) is their driver.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

# A token this close to its expiry is not sent: it could expire on the way.
EXPIRY_MARGIN = 1.0
# Vendors that omit expires_in (Salesforce does) get this lifetime; a 401 refreshes sooner.
DEFAULT_LIFETIME = 3600.0

REFUSED_BACKOFF = (30.0, 600.0)  # first delay, cap: the grant was refused
TRANSIENT_BACKOFF = (1.0, 30.0)  # the token endpoint failed or could not be reached

# Others leave a link marked for rotation to its marker this long: longer than a token
# request takes, so a marker that lost storage mid-rotation can still put the new link back.
INTENT_TTL = 30.0
# A marker rotates alone (storage down) only this well inside INTENT_TTL: processes' clocks differ.
INTENT_MARGIN = 5.0
# After storage answers again, a process does not rotate for this long, so that a process
# holding a link storage missed (rotated during the outage, or lost by a Redis restarted
# empty) has put it back first. Longer than a few STORAGE_RETRY.
RECOVERY_GRACE = 3.0
# How often a process without a usable token looks at storage again.
STORAGE_RETRY = 1.0


@dataclass(frozen=True)
class TokenRecord:
    """What processes share about a vendor's token (secret: never logged)."""

    access_token: str
    issued_at: float
    expires_at: float
    refresh_token: str | None = None
    origin: str = ""  # fingerprint of the configured credential the chain started from
    generation: int = 0  # rotations since the configured refresh token
    # Stored marks: which process is rotating this link (and since when), and how often the
    # token endpoint refused it (last at refused_at, saying ``refusal``).
    rotating_by: str = ""
    rotating_since: float = 0.0
    refused_at: float = 0.0
    refusals: int = 0
    refusal: str = ""

    def usable(self, now: float) -> bool:
        return now < self.expires_at - EXPIRY_MARGIN

    def fresh(self, now: float, refresh_before: float, stale: str | None) -> bool:
        """Neither due for refresh nor the token the vendor just rejected."""
        return self.access_token != stale and not self.due(now, refresh_before)

    def settled(self) -> TokenRecord:
        """The link without marks."""
        return replace(self, rotating_by="", rotating_since=0.0, refused_at=0.0, refusals=0, refusal="")

    def rotating(self, by: str, now: float) -> TokenRecord:
        return replace(self, rotating_by=by, rotating_since=now)

    def refused_now(self, now: float, why: str) -> TokenRecord:
        return replace(self, rotating_by="", rotating_since=0.0, refused_at=now, refusals=self.refusals + 1, refusal=why)

    def next_link(self, answer: TokenRecord) -> TokenRecord:
        """The token endpoint's ``answer`` to this link's refresh token, as the chain's next link."""
        return replace(answer, generation=self.generation + 1)

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
            "generation": self.generation,
            "rotating_by": self.rotating_by,
            "rotating_since": self.rotating_since,
            "refused_at": self.refused_at,
            "refusals": self.refusals,
            "refusal": self.refusal,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TokenRecord:
        return cls(
            access_token=str(data["access_token"]),
            issued_at=float(data["issued_at"]),
            expires_at=float(data["expires_at"]),
            refresh_token=data.get("refresh_token"),
            origin=str(data.get("origin", "")),
            generation=int(data.get("generation", 0)),
            rotating_by=str(data.get("rotating_by", "")),
            rotating_since=float(data.get("rotating_since", 0.0)),
            refused_at=float(data.get("refused_at", 0.0)),
            refusals=int(data.get("refusals", 0)),
            refusal=str(data.get("refusal", "")),
        )


@dataclass(frozen=True)
class Held:
    """What one process holds of a vendor's token, and what it may do with it alone."""

    record: TokenRecord | None = None
    made: bool = False  # rotated here and not yet in storage: nobody else knows its refresh token
    started_at: float | None = None  # when storage took our mark to rotate ``record``

    def may_rotate_alone(self, now: float, *, chain: bool, shared: bool) -> bool:
        """With storage down, whether this process may ask for a new token. A grant without
        a chain (client credentials, JWT) always may; a chain only from a link nobody else
        can be rotating. A store no other process shares (``shared`` False) leaves every
        link this process holds to it, but a chain it could not read is none of them."""
        if not chain:
            return True
        if self.record is None:
            return False
        if self.made or not shared:
            return True
        return self.started_at is not None and now < self.started_at + INTENT_TTL - INTENT_MARGIN

    def adoptable(self, stored: TokenRecord, now: float) -> bool:
        """Whether a usable stored token may replace ours (never an older link, nor over a
        link of ours that storage has not seen)."""
        if self.made or not stored.usable(now):
            return False
        return self.record is None or stored.generation >= self.record.generation


@dataclass(frozen=True)
class Adopt:
    """Use the stored token: another process refreshed it."""

    record: TokenRecord


@dataclass(frozen=True)
class Store:
    """Put ``record`` into storage, which holds an older link than ours (or none)."""

    record: TokenRecord


@dataclass(frozen=True)
class Rotate:
    """Ask the token endpoint, from ``base``'s refresh token (None: the grant has no chain)."""

    base: TokenRecord | None


@dataclass(frozen=True)
class Wait:
    """Do not call the token endpoint before ``until``. ``follow``: another process is
    refreshing right now, worth watching for; ``adopt``: a stored token usable meanwhile."""

    until: float
    reason: str
    follow: bool = False
    adopt: TokenRecord | None = None


Step = Adopt | Store | Rotate | Wait


def plan(
    stored: TokenRecord | None,
    held: Held,
    now: float,
    *,
    me: str,
    seed: TokenRecord | None,
    refresh_before: float,
    stale: str | None = None,
    shared: bool = True,
    recovering_until: float = 0.0,
) -> Step:
    """What a process should do about its token, storage answering with ``stored``.

    ``me`` names this process in marks; ``seed`` is the configured refresh token as the
    chain's first link (None for a grant without a chain); ``stale`` an access token the
    vendor rejected; ``recovering_until`` the end of this process's RECOVERY_GRACE.
    """
    mine = held.record
    if seed is None:
        if stored is not None and stored.fresh(now, refresh_before, stale):
            return Adopt(stored)
        if held.made and mine is not None and mine.fresh(now, refresh_before, stale):
            return Store(mine)  # fetched while storage was down: share it
        return Rotate(None)
    if mine is not None and (stored is None or stored.generation < mine.generation):
        # Storage lost the newest link: a rotation it missed, or a Redis that came back
        # empty (or from an older snapshot). Put ours back; a higher one replaces it.
        return Store(mine.settled())
    head = seed if stored is None else stored
    if head.fresh(now, refresh_before, stale):
        return Adopt(head)
    adopt = head if head.usable(now) else None
    if head.refused_at:
        retry = head.refused_at + failure_delay(head.refusals, refused=True)
        if now < retry:
            return Wait(retry, head.refusal or "the token endpoint refused the grant", adopt=adopt)
    if shared and head.rotating_by not in ("", me) and now < head.rotating_since + INTENT_TTL:
        return Wait(head.rotating_since + INTENT_TTL, "another process is refreshing the token", follow=True, adopt=adopt)
    if shared and now < recovering_until:
        return Wait(recovering_until, "shared token store answers again; a newer token may yet be put back", adopt=adopt)
    return Rotate(head)


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
