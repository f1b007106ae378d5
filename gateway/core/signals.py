"""What vendors say about their own limits on each answer, read into our budgets' terms.

A budget that ``follow``s a signal reads one :class:`Reading` from each answer: what is
left (``remaining``), when that count resets (``reset``, seconds), a pause (nothing goes
before it ends), and where the vendor states it, its own ``limit`` over its ``window``.
Readings only ever lower a budget (``core.budget.adjust`` never raises one); a smaller
vendor limit than ours lowers ours (:func:`smaller_limit`). When several readings concern
one budget (its signal, a Retry-After, a quota refusal), the strictest wins
(:func:`combine`): the longest pause, the lowest remaining.

A *quota refusal* is the vendor refusing a request for a quota rather than for anything
else: HubSpot's 429 naming its ``DAILY`` policy, Salesforce's 403
``REQUEST_LIMIT_EXCEEDED``. It pauses the budgets following that signal, and it is neither
an auth failure nor a breaker failure (:func:`is_quota_refusal`).

Pure: headers are any case-insensitive mapping, the body is its first bytes (possibly
cut short, possibly not JSON), the clock is passed in. A value that does not parse says
nothing; nothing here raises on what a vendor sends.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from gateway.config.vendor_signals import Follow
from gateway.core.budget import FIXED, Adjustment, Charge, Level
from gateway.core.structured import Member, parse_list

Headers = Mapping[str, str]

DAY = 86400.0
# HubSpot's daily quota refused or spent, on a budget without a fixed window: a pause at
# least this long, so that a budget whose own count frees soon does not send refusal after
# refusal.
MIN_DAILY_PAUSE = 60.0
# Salesforce counts a rolling 24 h: its quota frees bit by bit, so a refusal (or a spent
# count) pauses a budget without a fixed window this long, and the next request finds out.
ROLLING_QUOTA_PAUSE = 3600.0
# A reset this large is a Unix time, not seconds from now (some vendors send X-RateLimit-
# Reset as one): no limit resets 31 years from now.
EPOCH_THRESHOLD = 1e9
# The first bytes of a body that tell a quota refusal: the vendors' error bodies are short
# and name the quota near their start.
REFUSAL_BODY_BYTES = 4096


@dataclass(frozen=True)
class BudgetWindow:
    """One budget as a signal reads it: its kind (core.budget BUCKET | ROLLING | FIXED),
    ``per``, the ``cost`` of one request, and ``reset``, the seconds until its own count
    moves (``core.budget.level``: a fixed window's end, a rolling quota's oldest count
    leaving, a bucket being full)."""

    kind: str
    per: float
    cost: int
    reset: float

    @classmethod
    def of(cls, charge: Charge, level: Level) -> BudgetWindow:
        return cls(charge.kind, charge.per, charge.cost, level.reset)


@dataclass(frozen=True)
class Reading:
    """What one answer said about one budget."""

    remaining: float | None = None
    reset: float | None = None  # seconds until the vendor's count resets; None: not said
    pause: float | None = None  # seconds: nothing goes before (a quota refusal, a Retry-After)
    limit: int | None = None  # the vendor's own limit for this count
    window: float | None = None  # seconds its limit covers; None: the budget's own span
    refused: bool = False  # this answer is the vendor refusing a request for this quota


@dataclass(frozen=True)
class _Answer:
    status: int
    headers: Headers
    body: bytes
    now: float
    budget: BudgetWindow


def read(signal: str, status: int, headers: Headers, body: bytes, now: float, budget: BudgetWindow) -> Reading:
    """What the answer (``status``, ``headers``, the first bytes of ``body``) said about a
    budget that follows ``signal``; ValueError for a name not in config.vendor_signals.SIGNALS."""
    reader = _READERS.get(signal)
    if reader is None:
        raise ValueError(f"unknown signal {signal!r}")
    return reader(_Answer(status, headers, body, now, budget))


def read_follow(follow: Follow, status: int, headers: Headers, body: bytes, now: float,
                budget: BudgetWindow) -> Reading:
    """What the answer said about a budget, in either form of its ``follow``."""
    if follow.signal is not None:
        return read(follow.signal, status, headers, body, now, budget)
    if follow.remaining is None:
        return Reading()
    reset = _count(headers.get(follow.reset)) if follow.reset is not None else None
    if reset is not None and follow.reset_unit == "ms":
        reset /= 1000
    elif reset is not None and follow.reset_unit == "epoch":
        reset = max(0.0, reset - now)
    return Reading(remaining=_count(headers.get(follow.remaining)), reset=reset)


def combine(readings: Iterable[Reading]) -> Adjustment | None:
    """One budget's readings of one answer as one Adjustment, the strictest winning: the
    longest pause; the lowest remaining, with its own reset (at equal remaining, the longer
    reset, no reset counting longest: the count then lasts as long as ours). None when
    nothing was said."""
    pause: float | None = None
    lowest: Reading | None = None
    for reading in readings:
        if reading.pause is not None:
            pause = reading.pause if pause is None else max(pause, reading.pause)
        if reading.remaining is not None and (lowest is None or _stricter(reading, lowest)):
            lowest = reading
    if pause is None and lowest is None:
        return None
    return Adjustment(
        pause=pause,
        remaining=lowest.remaining if lowest else None,
        reset=lowest.reset if lowest else None,
    )


def _stricter(a: Reading, b: Reading) -> bool:
    assert a.remaining is not None and b.remaining is not None
    if a.remaining != b.remaining:
        return a.remaining < b.remaining
    return (math.inf if a.reset is None else a.reset) > (math.inf if b.reset is None else b.reset)


def smaller_limit(reading: Reading, limit: int, per: float) -> int | None:
    """The vendor's limit when it is smaller than a budget's ``limit`` over the same span
    (``per``); None otherwise. A limit over another span says nothing of ours."""
    if reading.limit is None or reading.limit >= limit:
        return None
    if reading.window is not None and not math.isclose(reading.window, per, rel_tol=1e-6):
        return None
    return reading.limit


def is_quota_refusal(signals: Iterable[str], status: int, body: bytes) -> bool:
    """Whether the answer is the vendor refusing for a quota that one of ``signals`` (those
    the policy's budgets follow) names: neither an auth failure nor a breaker failure."""
    return any(_REFUSALS[s](status, body) for s in signals if s in _REFUSALS)


def refusal_body_size(signals: Iterable[str], status: int) -> int:
    """How many first bytes of an answer's body the signals need (0: none), so that the
    body is read only for the answers that may be quota refusals."""
    if not signals:  # most vendors: no generator made per answer
        return 0
    return REFUSAL_BODY_BYTES if any(_REFUSAL_STATUS.get(s) == status for s in signals) else 0


# The readers, one per signal.


@dataclass(frozen=True)
class _Quota:
    """One policy of RateLimit-Policy."""

    limit: int | None
    window: float | None
    unit: str | None  # None: requests

    def counts_requests(self) -> bool:
        return self.unit in (None, "requests")


def _ietf(a: _Answer) -> Reading:
    """draft-ietf-httpapi-ratelimit-headers-10: ``RateLimit: "name";r=R;t=T`` (what is left
    of each policy, and seconds until it resets) and ``RateLimit-Policy: "name";q=Q;w=W``
    (each policy's quota over its window). Several policies: the one over the budget's own
    span, else the tightest. Without them, the older drafts' RateLimit-Remaining/-Reset."""
    policies = _ietf_policies(a.headers)
    candidates: list[Reading] = []
    for item, params in _members(a.headers, "RateLimit") or ():
        remaining, reset = _whole(params.get("r")), _whole(params.get("t"))
        quota = policies.get(item) if isinstance(item, str) else None
        if remaining is None or (quota is not None and not quota.counts_requests()):
            continue  # no count, or a count of something other than requests (bytes, ...)
        if quota is None:
            candidates.append(Reading(remaining=remaining, reset=reset))
        else:
            candidates.append(Reading(remaining=remaining, reset=reset, limit=quota.limit, window=quota.window))
    if not candidates:
        return _ietf_older(a, policies)
    same_span = [c for c in candidates if c.window is not None and math.isclose(c.window, a.budget.per)]
    return min(same_span or candidates, key=lambda c: (c.remaining, -(c.reset or 0.0)))


def _ietf_policies(headers: Headers) -> dict[str, _Quota]:
    out: dict[str, _Quota] = {}
    for item, params in _members(headers, "RateLimit-Policy") or ():
        if isinstance(item, str):
            quota, window, unit = _whole(params.get("q")), _whole(params.get("w")), params.get("qu")
            out[item] = _Quota(
                int(quota) if quota is not None else None,
                window or None,
                unit if isinstance(unit, str) else None,
            )
    return out


def _ietf_older(a: _Answer, policies: dict[str, _Quota]) -> Reading:
    same_span = [(q.limit, q.window) for q in policies.values()
                 if q.limit is not None and q.window is not None and q.counts_requests()
                 and math.isclose(q.window, a.budget.per)]
    limit, window = min(same_span) if same_span else _older_limit(a.headers)
    return Reading(
        remaining=_count(a.headers.get("RateLimit-Remaining")),
        reset=_reset(a.headers.get("RateLimit-Reset"), a.now),
        limit=limit,
        window=window,
    )


def _older_limit(headers: Headers) -> tuple[int | None, float | None]:
    """Drafts 00-07: ``RateLimit-Limit: 10`` or ``10, 10;w=1, 1000;w=3600`` (the limit
    that ``RateLimit-Remaining`` counts, then the policies, each with its window)."""
    members = _members(headers, "RateLimit-Limit")
    if not members:
        return None, None
    first, params = members[0]
    limit = _whole(first)
    if limit is None or limit < 1:
        return None, None
    window = _whole(params.get("w"))
    for item, policy in members[1:]:
        if window is None and _whole(item) == limit:
            window = _whole(policy.get("w"))
    return int(limit), window or None


def _x_ratelimit(a: _Answer) -> Reading:
    limit = _count(a.headers.get("X-RateLimit-Limit"))
    return Reading(
        remaining=_count(a.headers.get("X-RateLimit-Remaining")),
        reset=_reset(a.headers.get("X-RateLimit-Reset"), a.now),
        limit=int(limit) if limit and limit.is_integer() else None,
    )


def _hubspot_interval(a: _Answer) -> Reading:
    """HubSpot's burst limit: Remaining of Max over Interval-Milliseconds (10 s)."""
    interval = _count(a.headers.get("X-HubSpot-RateLimit-Interval-Milliseconds"))
    span = interval / 1000 if interval else None
    return _counted(a, "X-HubSpot-RateLimit-Remaining", "X-HubSpot-RateLimit-Max", span, reset=span)


def _hubspot_secondly(a: _Answer) -> Reading:
    return _counted(a, "X-HubSpot-RateLimit-Secondly-Remaining", "X-HubSpot-RateLimit-Secondly", 1.0, reset=1.0)


def _hubspot_daily(a: _Answer) -> Reading:
    """HubSpot's daily limit (absent on OAuth calls, which have none). It resets at
    midnight in the account's time zone, which we do not know; the budget's own reset
    stands in for it (see ``_daily_pause``)."""
    reading = _counted(a, "X-HubSpot-RateLimit-Daily-Remaining", "X-HubSpot-RateLimit-Daily", DAY)
    return _exhaustion(a, reading, _hubspot_daily_refusal(a.status, a.body), "hubspot-daily")


def _salesforce_daily(a: _Answer) -> Reading:
    """``Sforce-Limit-Info: api-usage=USED/MAX`` (more parts may follow, ``;``-separated):
    the org's requests over the rolling 24 h, every integration of the org included."""
    reading = Reading()
    for part in (a.headers.get("Sforce-Limit-Info") or "").split(";"):
        name, _, value = part.partition("=")
        usage = re.fullmatch(r"\s*(\d{1,15})/(\d{1,15})\s*", value)
        if name.strip().lower() == "api-usage" and usage and int(usage.group(2)) > 0:
            used, most = int(usage.group(1)), int(usage.group(2))
            reading = Reading(remaining=float(max(0, most - used)), limit=most, window=DAY)
            break
    return _exhaustion(a, reading, _salesforce_daily_refusal(a.status, a.body), "salesforce-daily")


def _apollo(*remaining: str) -> Callable[[_Answer], Reading]:
    """Apollo's fixed windows (docs.apollo.io, Rate limits): what is left, under the first
    of ``remaining`` that the answer has (the day's count is sent as x-24-hour-requests-left,
    and listed on Apollo's page as x-daily-requests-left). No reset time: Apollo's windows
    open with a team's first request. No limit either: Apollo limits each endpoint on its
    own (bulk enrichment at a tenth of the rest), so one endpoint's x-rate-limit-* would
    wrongly cap a budget that spans several."""

    def reader(a: _Answer) -> Reading:
        left = next((a.headers[name] for name in remaining if name in a.headers), None)
        return Reading(remaining=_count(left))

    return reader


def _counted(a: _Answer, remaining: str, limit: str, window: float | None, reset: float | None = None) -> Reading:
    top = _count(a.headers.get(limit))
    most = int(top) if top and top.is_integer() else None
    return Reading(
        remaining=_count(a.headers.get(remaining)),
        reset=reset,
        limit=most,
        window=window if most is not None else None,
    )


def _exhaustion(a: _Answer, reading: Reading, refused: bool, signal: str) -> Reading:
    """A daily quota gives no reset time: spent (less than a request's cost left) or
    refused, the budget pauses until ``_daily_pause``; with room left the count lowers ours
    for as long as our own count lasts (no reset)."""
    spent = reading.remaining is not None and reading.remaining < a.budget.cost
    if not (spent or refused):
        return reading
    pause = _daily_pause(signal, a.budget)
    return Reading(
        remaining=reading.remaining, reset=pause, pause=pause if refused else None,
        limit=reading.limit, window=reading.window, refused=refused,
    )


def _daily_pause(signal: str, budget: BudgetWindow) -> float:
    """How long a spent or refused daily quota pauses a budget. A fixed window: until it
    ends (its reset and timezone are the vendor's day). Otherwise Salesforce's rolling
    quota: an hour, then a request finds out; HubSpot's day ends at the account's midnight
    in a time zone we do not know: the budget's own reset, at least a minute."""
    if budget.kind == FIXED:
        return max(0.0, budget.reset)
    if signal == "salesforce-daily":
        return ROLLING_QUOTA_PAUSE
    return max(MIN_DAILY_PAUSE, budget.reset)


def _hubspot_daily_refusal(status: int, body: bytes) -> bool:
    """HubSpot's 429 body names the limit that was hit: ``"policyName": "DAILY"``."""
    return status == 429 and _field_is(body, "policyName", "DAILY")


def _salesforce_refusal(status: int, body: bytes) -> bool:
    """Salesforce's 403 ``[{"errorCode": "REQUEST_LIMIT_EXCEEDED", "message": ...}]``: the
    org's daily requests ("TotalRequests Limit exceeded.") or its concurrent long-running
    requests ("ConcurrentPerOrgLongTxn Limit exceeded."). Either is a quota, not the
    credential; ``_salesforce_daily_refusal`` tells the daily one."""
    return status == 403 and _field_is(body, "errorCode", "REQUEST_LIMIT_EXCEEDED")


def _salesforce_daily_refusal(status: int, body: bytes) -> bool:
    return _salesforce_refusal(status, body) and b"concurrent" not in body.lower()


def _field_is(body: bytes, name: str, value: str) -> bool:
    """Whether the JSON body (an object, or a list of them) has ``name: value``; a body cut
    short, which no longer parses, is searched for the pair as JSON writes it."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        pattern = rb'"' + re.escape(name.encode()) + rb'"\s*:\s*"' + re.escape(value.encode()) + rb'"'
        return re.search(pattern, body) is not None
    objects = document if isinstance(document, list) else [document]
    return any(isinstance(o, dict) and o.get(name) == value for o in objects)


def _members(headers: Headers, name: str) -> list[Member] | None:
    getall = getattr(headers, "getall", None)
    lines = list(getall(name, ())) if callable(getall) else [v for v in [headers.get(name)] if v is not None]
    return parse_list(lines) if lines else None


_COUNT = re.compile(r"\s*(\d{1,15}(?:\.\d{1,6})?)\s*")


def _count(value: str | None) -> float | None:
    """A non-negative number as a header sends it; None for anything else."""
    if value is None:
        return None
    found = _COUNT.fullmatch(value)
    return float(found.group(1)) if found else None


def _whole(value: object) -> float | None:
    """A structured field's non-negative integer."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return float(value)


def _reset(value: str | None, now: float) -> float | None:
    reset = _count(value)
    if reset is not None and reset >= EPOCH_THRESHOLD:
        return max(0.0, reset - now)
    return reset


_READERS: dict[str, Callable[[_Answer], Reading]] = {
    "ietf": _ietf,
    "x-ratelimit": _x_ratelimit,
    "hubspot-interval": _hubspot_interval,
    "hubspot-secondly": _hubspot_secondly,
    "hubspot-daily": _hubspot_daily,
    "salesforce-daily": _salesforce_daily,
    "apollo-minute": _apollo("x-minute-requests-left"),
    "apollo-hour": _apollo("x-hourly-requests-left"),
    "apollo-day": _apollo("x-24-hour-requests-left", "x-daily-requests-left"),
}
_REFUSALS: dict[str, Callable[[int, bytes], bool]] = {
    "hubspot-daily": _hubspot_daily_refusal,
    "salesforce-daily": _salesforce_refusal,
}
_REFUSAL_STATUS = {"hubspot-daily": 429, "salesforce-daily": 403}
