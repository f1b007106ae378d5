"""Which vendor a request target names, whether its path is safe to forward, and the
globs that policies use to match paths.

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

VENDOR_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")
RESERVED_VENDORS = frozenset({"metrics", "healthz", "readyz"})

_MAX_DECODES = 3


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
    if any(ord(c) > 0x7E for c in raw_path):
        raise UnsafeTarget("path must be ASCII (percent-encode other characters)")
    text = raw_path
    for _ in range(_MAX_DECODES + 1):
        _check_form(text)
        decoded = unquote_to_bytes(text.encode("latin-1")).decode("latin-1")
        if decoded == text:
            return
        text = decoded
    raise UnsafeTarget("path is percent-encoded too many times")


def _check_form(text: str) -> None:
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise UnsafeTarget("path must not contain control characters")
    if "\\" in text:
        raise UnsafeTarget("path must not contain backslashes")
    if "//" in text:
        raise UnsafeTarget("path must not contain empty segments ('//')")
    if any(segment == ".." for segment in text.split("/")):
        raise UnsafeTarget("path must not contain '..' segments")


class Glob:
    """A path glob: ``*`` matches within one segment, a ``**`` segment any number of them.

    ``/enrich/**`` matches ``/enrich`` and everything below it. Matching takes time linear
    in the pattern times the path, whatever either holds: callers choose the paths, and a
    backtracking regular expression (``/*a*a*a/q``, ``/**/a/**/b``) would let one request
    hold the event loop for seconds.
    """

    __slots__ = ("_parts",)

    def __init__(self, pattern: str) -> None:
        self._parts: tuple[re.Pattern[str] | None, ...] = tuple(
            None if part == "**" else _segment(part) for part in pattern.split("/")[1:]
        )

    def fits(self, path: str) -> bool:
        if not path.startswith("/"):
            return False
        segments = path.split("/")[1:]
        # reach[i]: the pattern's parts so far can consume exactly the first i segments.
        reach = [True] + [False] * len(segments)
        for part in self._parts:
            if part is None:
                for i in range(1, len(reach)):
                    reach[i] = reach[i] or reach[i - 1]
            else:
                reach = [False] + [reach[i] and part.fullmatch(segments[i]) is not None for i in range(len(segments))]
        return reach[-1] if self._parts else path in ("", "/")


def _segment(part: str) -> re.Pattern[str]:
    """One segment's glob. Each middle piece is taken at its first place and kept there
    (an atomic group): for ``*`` that place is always right, and nothing backtracks."""
    if "*" not in part:
        return re.compile(re.escape(part))
    first, *middle, last = part.split("*")
    regex = re.escape(first) + "".join(f"(?>[^/]*?{re.escape(piece)})" for piece in middle)
    return re.compile(regex + "[^/]*" + re.escape(last))


def upstream_url(origin: str, base_path: str, target: Target) -> str:
    """The URL to send to: built only from the policy's origin and base path."""
    path = base_path.rstrip("/") + target.path
    if not path:
        path = "/"
    if target.query is None:
        return origin + path
    return f"{origin}{path}?{target.query}"
