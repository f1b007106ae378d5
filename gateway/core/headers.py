"""Header rules: which headers travel between caller and vendor (RFC 9110 section 7.6.1),
and how the vendor's references to itself are turned into the gateway's."""

from __future__ import annotations

import email.utils
import re
from collections.abc import Iterable
from functools import lru_cache
from urllib.parse import unquote

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
# upstream connection, or that describe the callers' own network (Forwarded, every
# X-Forwarded-*, and the client-address headers of nginx and CDNs: a third-party vendor
# must not learn internal hosts and addresses): never copied from the caller's request.
CALLER_ONLY = frozenset(
    {"host", "content-length", "expect", "authorization", "x-gateway-key", "x-gateway-max-wait", "forwarded",
     "x-real-ip", "true-client-ip", "x-client-ip"}
)
CALLER_ONLY_PREFIX = "x-forwarded-"


def caller_only(name: str) -> bool:
    """Whether a request header (any case) stays with the gateway instead of reaching the vendor."""
    lowered = name.lower()
    return lowered in CALLER_ONLY or lowered.startswith(CALLER_ONLY_PREFIX)


def hop_by_hop(connection_values: Iterable[str]) -> frozenset[str]:
    """The standard hop-by-hop names plus those a ``Connection`` header lists."""
    return _hop_by_hop(tuple(connection_values))


# Connection headers say much the same on every message ("keep-alive", "close"): the
# sets are made once per value (a bounded cache, as whoever sends them chooses them).
@lru_cache(maxsize=64)
def _hop_by_hop(connection_values: tuple[str, ...]) -> frozenset[str]:
    named = {
        token.strip().lower()
        for value in connection_values
        for token in value.split(",")
        if token.strip()
    }
    return HOP_BY_HOP | named if named else HOP_BY_HOP


# The caller's request headers that never reach the vendor, lowercased, when its request
# has no Connection header: hop-by-hop and caller_only (but for CALLER_ONLY_PREFIX).
NOT_FORWARDED = HOP_BY_HOP | CALLER_ONLY


def not_forwarded(connection_values: Iterable[str]) -> frozenset[str]:
    """NOT_FORWARDED and the names a caller's ``Connection`` header lists."""
    return _not_forwarded(tuple(connection_values))


@lru_cache(maxsize=64)
def _not_forwarded(connection_values: tuple[str, ...]) -> frozenset[str]:
    return _hop_by_hop(connection_values) | CALLER_ONLY


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


# Answer headers whose value is a URI reference a client follows or records.
POINTERS = frozenset({"location", "content-location"})

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
_DEFAULT_PORTS = {"http": "80", "https": "443"}


def into_gateway(reference: str, origin: str, base_path: str, prefix: str) -> str:
    """A ``Location`` or ``Content-Location`` as the caller should see it.

    One that points into the vendor's upstream (``origin`` plus ``base_path``), absolute
    (``https://api.vendor.com/base/x``), network-path (``//api.vendor.com/base/x``) or
    path-absolute (``/base/x``), becomes the path-absolute ``{prefix}/x`` with its query and
    fragment, so a client following it comes back through the gateway (RFC 9110 10.2.2
    allows a relative Location; building an absolute one would trust the request's Host).
    Anything else is returned as it is: another origin, a path outside the base path or one
    with dot segments, and relative references (``x/y``, ``../y``, ``?q``), which the
    client resolves against the gateway's URL of the request and so reach the same vendor
    path as long as they stay under the base path.
    """
    match = _SCHEME.match(reference)
    if match is not None:
        scheme, rest = match.group()[:-1], reference[match.end():]
        if not rest.startswith("//"):
            return reference
    elif reference.startswith("//"):
        scheme, rest = origin.partition("://")[0], reference
    elif reference.startswith("/"):
        return _moved(reference, base_path, prefix) or reference
    else:
        return reference
    authority_end = _end_of(rest, 2, "/?#")
    if not _same_origin(scheme, rest[2:authority_end], origin):
        return reference
    return _moved(rest[authority_end:], base_path, prefix) or reference


def _moved(reference: str, base_path: str, prefix: str) -> str | None:
    """A path-absolute ``reference`` (or an empty path and its query and fragment) from
    under ``base_path`` to under ``prefix``; None when it is not under ``base_path``."""
    path_end = _end_of(reference, 0, "?#")
    path = reference[:path_end] or "/"
    if base_path and path != base_path and not path.startswith(base_path + "/"):
        return None
    if any(unquote(segment) in (".", "..") for segment in path.split("/")):
        return None
    return prefix + path[len(base_path):] + reference[path_end:]


def _end_of(text: str, start: int, stops: str) -> int:
    return min((i for i in (text.find(c, start) for c in stops) if i >= 0), default=len(text))


def _same_origin(scheme: str, authority: str, origin: str) -> bool:
    origin_scheme, _, origin_authority = origin.partition("://")
    if scheme.lower() != origin_scheme.lower() or "@" in authority or "@" in origin_authority:
        return False
    return _host_port(scheme.lower(), authority) == _host_port(scheme.lower(), origin_authority)


def _host_port(scheme: str, authority: str) -> tuple[str, str]:
    if authority.startswith("["):  # an IPv6 literal
        close = authority.find("]") + 1
        host, port = authority[:close], authority[close + 1:]
    else:
        host, _, port = authority.partition(":")
    return host.lower(), port or _DEFAULT_PORTS.get(scheme, "")
