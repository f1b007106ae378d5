"""Which vendor a request target names, and whether its path is safe to forward (the
globs that policies use to match paths live with the config: gateway.config.paths).

The gateway must never become an open proxy: the upstream URL is built only from the
policy's origin and base path plus a path that has been checked here, in raw form and
after percent-decoding (repeatedly, since some servers decode twice). A raw ``@`` is a
path character (RFC 3986 pchar: SDKs put e-mail addresses there) and passes: after the
origin's authority and a path that begins with ``/``, it can never be read as userinfo.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from gateway.config.paths import VENDOR_NAME

_MAX_DECODES = 3
_NOT_ASCII = re.compile(r"[^\x00-\x7e]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class UnsafeTarget(ValueError):
    """The request target cannot be forwarded; the message says why (safe to show)."""


@dataclass(frozen=True)
class Target:
    vendor: str
    path: str  # raw (still percent-encoded) path after the vendor prefix, "" or "/..."
    query: str | None  # raw query string without "?", None when the target had no "?"


def parse_target(raw_target: str) -> Target | None:
    """Split ``/{vendor}{path}?{query}``; None when the first segment is no vendor name.

    Raises UnsafeTarget for targets that must be refused outright.
    """
    if not raw_target.startswith("/"):
        raise UnsafeTarget("absolute-form and authority-form request targets are not accepted")
    if "#" in raw_target:
        # A client never sends a fragment (RFC 9112 3.2); forwarded, it would cut the query.
        raise UnsafeTarget("request target must not contain '#' (percent-encode it as %23)")
    path, sep, query = raw_target.partition("?")
    check_path(path)
    vendor, slash, rest = path[1:].partition("/")
    if not VENDOR_NAME.fullmatch(vendor):
        return None
    return Target(vendor=vendor, path=slash + rest, query=query if sep else None)


def check_path(raw_path: str) -> None:
    """Refuse traversal, empty segments, backslashes and control characters."""
    if _NOT_ASCII.search(raw_path):
        raise UnsafeTarget("path must be ASCII (percent-encode other characters)")
    text = raw_path
    for _ in range(_MAX_DECODES + 1):
        _check_form(text)
        if "%" not in text:  # nothing to decode
            return
        decoded = unquote_to_bytes(text.encode("latin-1")).decode("latin-1")
        if decoded == text:
            return
        text = decoded
    raise UnsafeTarget("path is percent-encoded too many times")


def _check_form(text: str) -> None:
    if _CONTROL.search(text):
        raise UnsafeTarget("path must not contain control characters")
    if "\\" in text:
        raise UnsafeTarget("path must not contain backslashes")
    if "//" in text:
        raise UnsafeTarget("path must not contain empty segments ('//')")
    if ".." in text and any(segment == ".." for segment in text.split("/")):
        raise UnsafeTarget("path must not contain '..' segments")


def upstream_url(origin: str, base_path: str, target: Target) -> str:
    """The URL to send to: built only from the policy's origin and base path."""
    path = base_path.rstrip("/") + target.path
    if not path:
        path = "/"
    if target.query is None:
        return origin + path
    return f"{origin}{path}?{target.query}"
