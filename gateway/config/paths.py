"""Vendor names and path globs: what a policy's prefix and its path matches may be.

They live with the config, which checks them when it loads; routing (gateway.core.routing)
reads the same vendor-name rule when it splits a request target.
"""

from __future__ import annotations

import re

VENDOR_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")
RESERVED_VENDORS = frozenset({"metrics", "healthz", "readyz"})


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
