"""Checks of the URLs a config names: vendors' upstreams and token endpoints, and storage.

Each check returns why a URL is refused, or None; none raises, whatever the text
(``urlsplit`` raises on a broken IPv6 host, ``.port`` on a bad port), and none echoes a
password. An upstream's base path is what every request is put under, so it must be
plain: no dot segments (percent-encoded ones included, as servers decode them), no
backslashes, no empty segments, no broken percent-encoding.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import SplitResult, unquote, urlsplit

from gateway.config.spec import Str

_HOST_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_BROKEN_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_DATABASE = re.compile(r"/?|/[0-9]{1,5}")
_MAX_DECODES = 3
_STORAGE_FORMS = "expected memory, redis://[:password@]host:port/db or rediss://..."


def check_http_url(value: str) -> str | None:
    """Why ``value`` is not a usable http(s) URL with a host and optional base path."""
    shown = _shown(value)
    if problem := _characters(value):
        return problem
    parts = _split(value)
    if parts is None:
        return f"{shown} is not a valid URL (a broken [IPv6] host or a port that is no number from 1 to 65535)"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"{shown} is not an http:// or https:// URL with a host"
    if "@" in parts.netloc:
        return "must not carry user:password (use credentials)"
    if "?" in value or "#" in value:
        return "must not carry a query or fragment"
    if problem := _authority(parts):
        return f"{shown} {problem}"
    return _base_path(parts.path)


def check_storage_url(value: str) -> str | None:
    """Why ``value`` is neither ``memory`` nor a usable redis:// or rediss:// URL (never echoed)."""
    if value == "memory":
        return None
    if _characters(value):
        return f"{_STORAGE_FORMS} (without spaces, control characters or non-ASCII text)"
    parts = _split(value)
    if parts is None or parts.scheme not in ("redis", "rediss") or not parts.hostname:
        return _STORAGE_FORMS
    if parts.query or parts.fragment or "?" in value or "#" in value:
        return "must not carry a query or fragment (percent-encode such characters in the password)"
    if problem := _authority(parts):
        return f"the storage URL {problem}"
    if not _DATABASE.fullmatch(parts.path):
        return "the database is a number after the port (redis://host:6379/0)"
    return None


def _characters(value: str) -> str | None:
    # urlsplit silently drops tabs and line breaks, so what it parses is not what was written.
    if not value.isascii() or any(c.isspace() or not c.isprintable() for c in value):
        return "must be ASCII without spaces or control characters (a host in punycode, a path percent-encoded)"
    return None


def _split(value: str) -> SplitResult | None:
    try:
        parts = urlsplit(value)
        _ = parts.port  # raises ValueError for a port that is no number from 0 to 65535
    except ValueError:
        return None
    return parts


def _authority(parts: SplitResult) -> str | None:
    host = parts.hostname or ""
    if parts.netloc.endswith(":") or parts.port == 0:
        return "has an empty or zero port"
    if "[" in parts.netloc:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return "has an invalid IPv6 address"
        return None
    labels = host.split(".")
    if len(host) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in labels):
        return "has an invalid host name"
    try:
        # A broken punycode label (xn--...) would fail later, in the HTTP client's URL.
        host.encode("ascii").decode("idna")
    except UnicodeError:
        return "has an invalid punycode (xn--) host name"
    return None


def _base_path(path: str) -> str | None:
    if _BROKEN_PERCENT.search(path):
        return "base path has a '%' that is not followed by two hex digits"
    text = path
    for _ in range(_MAX_DECODES + 1):
        if "\\" in text:
            return "base path must not contain backslashes"
        if "//" in text.rstrip("/"):
            return "base path must not contain empty segments ('//')"
        if any(segment in (".", "..") for segment in text.split("/")):
            return "base path must not contain '.' or '..' segments (percent-encoded ones included)"
        decoded = unquote(text, errors="surrogateescape")
        if decoded == text:
            return None
        text = decoded
    return "base path is percent-encoded too many times"


def _shown(value: str) -> str:
    """The URL as a problem may show it: a password hidden, and cut short."""
    text = repr(re.sub(r"(?<=//)[^/?#]*@", "***@", value))
    return text if len(text) <= 80 else text[:77] + "..."


# The spec of a field that holds a vendor's URL (an upstream, a token endpoint).
URL = Str(check=check_http_url, refs=True)
