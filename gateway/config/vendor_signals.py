"""The vendor's own word in a policy: the signals a budget's ``follow`` may name (or its
headers), and ``auth_failures``, when refused credentials stop the calls."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.config.spec import HEADER_NAME, Context, Field, Int, ListOf, Obj, Reporter, Spec, Str
from gateway.config.units import Duration

# The vendors' own signals ``follow`` may name (gateway/core/signals.py reads them).
SIGNALS = (
    "ietf",
    "x-ratelimit",
    "hubspot-interval",
    "hubspot-secondly",
    "hubspot-daily",
    "salesforce-daily",
    "apollo-minute",
    "apollo-hour",
    "apollo-day",
)


@dataclass(frozen=True)
class Follow:
    """Where a budget reads the vendor's own count: a signal by name, or a pair of headers
    (``remaining``, and ``reset`` in ``reset_unit``)."""

    remaining: str | None
    reset: str | None
    reset_unit: str
    signal: str | None = None


FOLLOW_HEADERS = Obj(
    Follow,
    {
        "remaining": Field(HEADER_NAME, required=True),
        "reset": Field(HEADER_NAME),
        "reset_unit": Field(Str(enum=("seconds", "ms", "epoch")), default="seconds"),
    },
    description="the vendor's remaining count (and reset) in headers of your choosing",
)


class _FollowSpec(Spec):
    """A vendor signal's name, or the mapping of header names."""

    description = "the vendor's own count lowers this budget, never raises it: a signal by name, or headers"

    def build(self, value: Any, ctx: Context, path: str, line: int) -> Any:
        if isinstance(value, str):
            if value not in SIGNALS:
                return ctx.error(line, path, f"unknown signal {value!r} (known: {', '.join(SIGNALS)})")
            return Follow(remaining=None, reset=None, reset_unit="seconds", signal=value)
        return FOLLOW_HEADERS.build(value, ctx, path, line)

    def schema(self) -> dict[str, Any]:
        return self._schema({"anyOf": [{"type": "string", "enum": list(SIGNALS)}, FOLLOW_HEADERS.schema()]})


FOLLOW = _FollowSpec()


MAX_PROBE_EVERY = 600.0  # the probe interval doubles up to this


@dataclass(frozen=True)
class AuthFailures:
    """When the vendor refusing our credential stops the calls: ``after`` consecutive
    answers with a status in ``statuses``; then one probe every ``probe_every``."""

    statuses: frozenset[int] = frozenset({401})
    after: int = 3
    probe_every: float = 30.0


def _check_auth_failures(a: dict[str, Any], r: Reporter) -> None:
    if 429 in a["statuses"]:
        r.error("statuses", "429 is the vendor's rate limit, not a refused credential")
    if a["probe_every"] > MAX_PROBE_EVERY:
        r.error("probe_every", "must be at most 10m (the probe interval doubles up to 10 minutes)")


AUTH_FAILURES = Obj(
    lambda statuses, after, probe_every: AuthFailures(frozenset(statuses), after, probe_every),
    {
        "statuses": Field(
            ListOf(
                Int(minimum=400, maximum=499),
                description="answers that mean the credential is refused (an empty list: never stop)",
            ),
            default=(401,),
        ),
        "after": Field(Int(minimum=1, maximum=1000, description="consecutive refusals that stop the calls"), default=3),
        "probe_every": Field(
            Duration(positive=True, description="then one request this often goes through as a probe, "
                     "the interval doubling after each refused probe up to 10m"),
            default=30.0,
        ),
    },
    check=_check_auth_failures,
    description="the vendor refusing our credential stops the calls",
)
