"""Header rules: which headers travel between caller and vendor (RFC 9110 section 7.6.1)."""

from __future__ import annotations

import email.utils
from collections.abc import Iterable

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)

# Headers meant for the gateway itself, or that the client library sets for the
# upstream connection, or that describe the callers' own network (Forwarded and every
# X-Forwarded-*: a third-party vendor must not learn internal hosts and addresses):
# never copied from the caller's request.
CALLER_ONLY = frozenset(
    {"host", "content-length", "expect", "authorization", "x-gateway-key", "x-gateway-max-wait", "forwarded"}
)
_CALLER_ONLY_PREFIX = "x-forwarded-"


def caller_only(name: str) -> bool:
    """Whether a request header (any case) stays with the gateway instead of reaching the vendor."""
    lowered = name.lower()
    return lowered in CALLER_ONLY or lowered.startswith(_CALLER_ONLY_PREFIX)


def hop_by_hop(connection_values: Iterable[str]) -> frozenset[str]:
    """The standard hop-by-hop names plus those a ``Connection`` header lists."""
    named = {
        token.strip().lower()
        for value in connection_values
        for token in value.split(",")
        if token.strip()
    }
    return HOP_BY_HOP | named


_LONGEST = 1e9  # seconds: a longer Retry-After (up to infinity, as a float) is read as this


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds from ``now`` (epoch) for a Retry-After given in seconds or as an HTTP-date."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), _LONGEST)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - now)
