"""What budgets read from headers and write into them: what a vendor's answer says of a
budget (Retry-After, what its ``follow`` reads), a caller's X-Gateway-Max-Wait, the RateLimit
headers added to answers, and a budget's standing in /_gateway/status. Pure functions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

from gateway.config.model import Budget, Policy
from gateway.core.budget import Adjustment, Level
from gateway.core.signals import BudgetWindow, Headers, Reading, combine, read_follow
from gateway.errors import BadRequest

# Vendor answers said to wait longer than this are taken to say this (a day).
MAX_PAUSE = 86400.0
# The statuses whose Retry-After pauses a budget.
PAUSING = (429, 503)


def vendor_said(budget: Budget, window: BudgetWindow, status: int, retry_after: float | None, headers: Headers,
               head: bytes, now: float) -> list[Reading]:
    """What the vendor's answer (its status, headers and the first bytes of its body) says
    of one budget: a 429 or 503 with Retry-After pauses it; what its ``follow`` reads."""
    readings = []
    if retry_after is not None and status in PAUSING:
        readings.append(Reading(pause=min(retry_after, MAX_PAUSE)))
    if budget.follow is not None:
        readings.append(read_follow(budget.follow, status, headers, head, now, window))
    return readings


def strictest(readings: Sequence[Reading]) -> Adjustment | None:
    """The readings of one budget as one adjustment, the strictest winning, no pause or
    reset longer than MAX_PAUSE; None when they say nothing."""
    said = combine(readings)
    if said is None:
        return None
    return replace(
        said,
        pause=None if said.pause is None else min(said.pause, MAX_PAUSE),
        reset=None if said.reset is None else min(said.reset, MAX_PAUSE),
    )


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def max_wait(policy: Policy, header: str | None) -> float:
    """The budget wait allowed for a request: the policy's, lowered by X-Gateway-Max-Wait."""
    allowed = policy.when_exhausted.wait
    if header is None:
        return allowed
    asked = _number(header)
    if asked is None or asked < 0:
        raise BadRequest(f"X-Gateway-Max-Wait must be a number of seconds, not {header[:40]!r}", vendor=policy.vendor)
    return min(allowed, asked)


def rate_limit_headers(budgets: Sequence[Budget], levels: Sequence[Level]) -> dict[str, str]:
    """RateLimit-Policy and RateLimit (draft-ietf-httpapi-ratelimit-headers-10) for every
    enforced budget, and the older RateLimit-Limit/-Remaining/-Reset for the tightest (the
    one with the fewest requests left). A paused budget has none left until its pause ends
    (``t`` is the pause left, not the window's reset). Shadow budgets are not shown:
    callers would pace themselves on a limit the gateway does not apply."""
    shown = _shown(budgets)
    if len(shown.indexes) == 1 and shown.indexes[0] < len(levels):
        # Most policies show one budget: its headers without a list, a choice or a join.
        remaining, reset = _usable(levels[shown.indexes[0]])
        left, after = str(remaining), str(reset)
        return {
            "RateLimit-Policy": shown.policy,
            "RateLimit": f"{shown.names[0]}r={left};t={after}",
            "RateLimit-Limit": shown.limits[0],
            "RateLimit-Remaining": left,
            "RateLimit-Reset": after,
        }
    usable = [_usable(levels[i]) for i in shown.indexes if i < len(levels)]  # (no levels: storage said none)
    if not usable:
        return {}
    if len(usable) == 1:
        at = 0
    else:
        at = min(range(len(usable)), key=lambda n: (usable[n][0] // shown.budgets[n].cost, -usable[n][1]))
    return {
        "RateLimit-Policy": shown.policy,
        "RateLimit": ", ".join(f"{name}r={r};t={t}" for name, (r, t) in zip(shown.names, usable)),
        "RateLimit-Limit": shown.limits[at],
        "RateLimit-Remaining": str(usable[at][0]),
        "RateLimit-Reset": str(usable[at][1]),
    }


class _Shown:
    """What the RateLimit headers say of a policy's budgets that does not change: the
    budgets shown, and their parts of the headers."""

    def __init__(self, budgets: Sequence[Budget]) -> None:
        self.all = budgets
        self.indexes = [i for i, b in enumerate(budgets) if not b.shadow]
        self.budgets = [budgets[i] for i in self.indexes]
        self.policy = ", ".join(f'"{b.name}";q={b.limit};w={math.ceil(b.per)}' for b in self.budgets)
        self.names = [f'"{b.name}";' for b in self.budgets]
        self.limits = [str(b.limit) for b in self.budgets]


# Per id of the budgets of a charge (most often a policy's own tuple): what they show.
_SHOWN: dict[int, _Shown] = {}
SHOWN_MAX = 1024


def _shown(budgets: Sequence[Budget]) -> _Shown:
    shown = _SHOWN.get(id(budgets))
    if shown is None or shown.all is not budgets:  # held here: the id is no other's meanwhile
        if len(_SHOWN) >= SHOWN_MAX:
            _SHOWN.clear()
        shown = _SHOWN[id(budgets)] = _Shown(budgets)
    return shown


def _usable(level: Level) -> tuple[int, int]:
    """What a caller may take now, and in how many seconds that changes."""
    if level.paused_for > 0:
        return 0, math.ceil(level.paused_for)
    return level.remaining, math.ceil(level.reset)


def standing(level: Level) -> dict[str, object]:
    """A budget's level in /_gateway/status: what is left, when it resets, and a pause."""
    out: dict[str, object] = {"remaining": level.remaining, "reset": round(level.reset, 3)}
    if level.paused_for > 0:
        out["paused_for"] = round(level.paused_for, 3)
    return out
