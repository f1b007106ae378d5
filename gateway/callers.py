"""Who is calling: the caller key checked in constant time, and what the caller may use."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from multidict import CIMultiDictProxy

from gateway.config.model import Caller
from gateway.config.secrets import Secret
from gateway.errors import Forbidden, Unauthenticated

ANONYMOUS = Caller(name="anonymous", key=Secret("", "anonymous"), vendors=None, priority="normal")


def digest(key: str) -> bytes:
    """What keys are compared by: equal-length digests, so compare_digest leaks nothing."""
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


def bearer_token(authorization: str) -> str | None:
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


class CallerDirectory:
    """Identifies callers by key. With no callers configured everyone is anonymous."""

    def __init__(self, callers: Iterable[Caller]) -> None:
        self._entries = [(digest(c.key.reveal()), c) for c in callers]

    def identify(self, headers: CIMultiDictProxy[str]) -> Caller:
        if not self._entries:
            return ANONYMOUS
        presented = presented_key(headers)
        if presented is None:
            raise Unauthenticated("send your key as X-Gateway-Key: KEY or Authorization: Bearer KEY")
        presented_digest = digest(presented)
        found: Caller | None = None
        # Compare against every key (digests of equal length) so timing tells nothing.
        for expected, caller in self._entries:
            if hmac.compare_digest(presented_digest, expected):
                found = caller
        if found is None:
            raise Unauthenticated("the caller key is not valid")
        return found

    def named(self, name: str) -> Caller:
        """The configured caller of this name (a replayed dead letter's), else anonymous."""
        return next((caller for _, caller in self._entries if caller.name == name), ANONYMOUS)

    @staticmethod
    def authorize(caller: Caller, vendor: str) -> None:
        if not caller.may_use(vendor):
            raise Forbidden(f"caller {caller.name!r} may not use vendor {vendor!r}", vendor=vendor)


def presented_key(headers: CIMultiDictProxy[str]) -> str | None:
    key = headers.get("X-Gateway-Key")
    if key:
        return key.strip()
    return bearer_token(headers.get("Authorization", ""))
