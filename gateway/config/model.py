"""The typed, frozen configuration: the gateway file and one policy per vendor.

Each dataclass has its spec beside it; the loader builds from the specs and
``gateway schema`` prints them, so validation and the JSON Schema share one source.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from gateway.config.credentials import (
    CREDENTIALS,
    ApiKey as ApiKey,
    Basic as Basic,
    Bearer as Bearer,
    Credentials as Credentials,
    JwtBearer as JwtBearer,
    NoCredentials as NoCredentials,
    OAuth2 as OAuth2,
)
from gateway.config.secrets import Secret
from gateway.config.spec import (
    AnyOf,
    Bool,
    Field,
    Int,
    ListOf,
    Number,
    Obj,
    Reporter,
    INVALID,
    Context,
    Spec,
    SecretRef,
    Str,
)
from gateway.config.units import Duration, Percent, Size
from gateway.config.urls import URL, check_storage_url
from gateway.config.yamlread import LineList
from gateway.config.paths import RESERVED_VENDORS, VENDOR_NAME, Glob
from gateway.config.vendor_signals import AUTH_FAILURES, FOLLOW, AuthFailures, Follow
from gateway.config.people import CALLER, NOTIFY, Caller as Caller, Notify as Notify

HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
CACHEABLE_METHODS = frozenset({"GET", "HEAD", "POST"})
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def _check_glob(value: str) -> str | None:
    if not value.startswith("/"):
        return "a path glob starts with '/'"
    if any("**" in seg and seg != "**" for seg in value.split("/")):
        return "'**' must stand alone as a whole segment"
    if not value.isascii() or "?" in value or "#" in value:
        return "a path glob is ASCII (percent-encoded as requests are) and has no query or fragment"
    return None


def _check_vendor(value: str) -> str | None:
    if value in RESERVED_VENDORS:
        return f"{value!r} is reserved for the gateway's own endpoints"
    return None


_TIMEZONE = re.compile(r"[A-Za-z0-9_+-]{1,30}(?:/[A-Za-z0-9_+-]{1,30}){0,2}")


def _check_timezone(value: str) -> str | None:
    unknown = f"unknown time zone {value[:40]!r}"
    if not _TIMEZONE.fullmatch(value):
        return unknown
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a folder of the zone database, such as America
        return unknown
    return None


def _check_listen(value: str) -> str | None:
    return None if parse_listen(value) else f"expected HOST:PORT (IPv6 as [::1]:8080), got {value[:60]!r}"


def parse_listen(value: str) -> tuple[str, int] | None:
    m = re.fullmatch(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:\[\]]+)):(?P<port>\d{1,5})", value)
    if not m or int(m.group("port")) > 65535:
        return None
    return (m.group("v6") or m.group("host")), int(m.group("port"))


GLOB = Str(check=_check_glob, description="path glob after the vendor prefix: * one segment, ** any")


@dataclass(frozen=True)
class Match:
    methods: frozenset[str] | None
    path: str | None
    pattern: Glob | None

    def fits(self, method: str, path: str) -> bool:
        if self.methods is not None and method not in self.methods:
            return False
        return self.pattern is None or self.pattern.fits(path or "/")


MATCH = Obj(
    lambda methods, path: Match(
        frozenset(methods) if methods else None, path, Glob(path) if path else None
    ),
    {
        "methods": Field(ListOf(Str(enum=HTTP_METHODS), min_items=1)),
        "path": Field(GLOB),
    },
    description="which requests: methods (default all) and a path glob",
)


@dataclass(frozen=True)
class Budget:
    name: str
    limit: int
    per: float
    window: str | None
    reset: str | None
    timezone: str | None
    match: Match | None
    cost: int
    key: str
    reserve: float
    shadow: bool
    follow: Follow | None


def _check_budget(b: dict[str, Any], r: Reporter) -> None:
    if b["window"] != "fixed":
        for name in ("reset", "timezone"):
            if r.has(name):
                r.error(name, "only applies with window: fixed")
    if b["window"] == "fixed" and b["per"] > 86400 and b["per"] % 86400:
        r.error("per", "a fixed window longer than a day is a whole number of days (7d, 30d)")
    if b["cost"] > b["limit"]:
        r.error("cost", f"cost {b['cost']} is more than the limit {b['limit']}: no request could ever pass")
    elif b["cost"] > b["limit"] * (1 - b["reserve"]):
        r.error("reserve", f"a reserve of {b['reserve']:.0%} leaves less than one request's cost to callers below priority high")


BUDGET = Obj(
    Budget,
    {
        "name": Field(Str(pattern=r"[A-Za-z0-9][A-Za-z0-9_.-]*"), required=True),
        "limit": Field(Int(minimum=1), required=True),
        "per": Field(Duration(positive=True), required=True),
        "window": Field(Str(enum=("rolling", "fixed"), description="absent: token bucket")),
        "reset": Field(Str(pattern=r"([01]\d|2[0-3]):[0-5]\d", description="HH:MM the fixed window starts")),
        "timezone": Field(Str(check=_check_timezone, description="Area/City of reset"), default=None),
        "match": Field(MATCH),
        "cost": Field(Int(minimum=1), default=1),
        "key": Field(Str(enum=("shared", "caller")), default="shared"),
        "reserve": Field(Percent(), default=0.0),
        "shadow": Field(Bool(), default=False),
        "follow": Field(FOLLOW),
    },
    check=_check_budget,
)


@dataclass(frozen=True)
class WhenExhausted:
    wait: float = 0.0


@dataclass(frozen=True)
class Backoff:
    initial: float = 1.0
    multiplier: float = 2.0
    max: float = 60.0
    jitter: float = 0.5


@dataclass(frozen=True)
class Retry:
    attempts: int = 1
    on: frozenset[int | str] = frozenset()
    backoff: Backoff = Backoff()


RETRY_WORDS = ("timeout", "connect")

RETRY = Obj(
    lambda attempts, on, backoff: Retry(attempts, frozenset(on), backoff),
    {
        "attempts": Field(Int(minimum=1, maximum=20), default=1),
        "on": Field(
            ListOf(
                AnyOf(
                    Int(minimum=400, maximum=599),
                    Str(enum=RETRY_WORDS),
                    message="must be a status from 400 to 599, timeout or connect",
                )
            ),
            default=(429, 500, 502, 503, 504, "timeout", "connect"),
        ),
        "backoff": Field(
            Obj(
                Backoff,
                {
                    "initial": Field(Duration(), default=1.0),
                    "multiplier": Field(Number(minimum=1.0), default=2.0),
                    "max": Field(Duration(), default=60.0),
                    "jitter": Field(Duration(), default=0.5),
                },
            ),
            default=Backoff(),
        ),
    },
)


@dataclass(frozen=True)
class CircuitBreaker:
    failure_ratio: float
    window: float
    min_calls: int
    open_for: float


BREAKER = Obj(
    CircuitBreaker,
    {
        "failure_ratio": Field(Number(above=0, maximum=1), default=0.5),
        "window": Field(Duration(positive=True), default=300.0),
        "min_calls": Field(Int(minimum=1), default=20),
        "open_for": Field(Duration(positive=True), default=30.0),
    },
)


class _OneOrList(Spec):
    """One value of ``item``, or a list of them: a tuple either way."""

    def __init__(self, item: Spec, description: str = "") -> None:
        self.items = ListOf(item, min_items=1)
        self.item = item
        self.description = description

    def build(self, value: Any, ctx: Context, path: str, line: int) -> Any:
        if isinstance(value, list):
            return self.items.build(value, ctx, path, line)
        built = self.item.build(value, ctx, path, line)
        return INVALID if built is INVALID else (built,)

    def schema(self) -> dict[str, Any]:
        return self._schema({"anyOf": [self.item.schema(), self.items.schema()]})


@dataclass(frozen=True)
class CacheRule:
    match: Match
    ttl: float
    stale_if_error: float
    max_size: int
    invalidated_by: tuple[Match, ...] = ()  # writes that drop every answer this rule stored

    def applies(self, method: str, path: str) -> bool:
        """GET and HEAD lookups; POST only where ``match.methods`` names it (search endpoints)."""
        if method == "POST" and (self.match.methods is None or "POST" not in self.match.methods):
            return False
        return method in CACHEABLE_METHODS and self.match.fits(method, path)


def _check_cache_rule(c: dict[str, Any], r: Reporter) -> None:
    methods = c["match"].methods
    if methods is not None and not methods <= CACHEABLE_METHODS:
        r.error("match", f"only GET, HEAD and POST lookups are cached, not {', '.join(sorted(methods - CACHEABLE_METHODS))}")
    for match in c["invalidated_by"]:
        if match.methods is not None and not match.methods <= WRITE_METHODS:
            others = ", ".join(sorted(match.methods - WRITE_METHODS))
            r.error("invalidated_by", f"only writes (POST, PUT, PATCH, DELETE) invalidate, not {others}")


CACHE_RULE = Obj(
    CacheRule,
    {
        "match": Field(MATCH, required=True),
        "ttl": Field(Duration(positive=True), required=True),
        "stale_if_error": Field(Duration(), default=0.0),
        "max_size": Field(Size(), default=1024 * 1024),
        "invalidated_by": Field(
            _OneOrList(MATCH, description="writes that, when they succeed, drop every answer this rule stored"),
            default=(),
        ),
    },
    check=_check_cache_rule,
)


@dataclass(frozen=True)
class Upstream:
    """The vendor's origin (scheme://host[:port]) and the base path every request is put under."""

    url: str
    origin: str
    base_path: str


def _upstream(url: str) -> Upstream:
    parts = urlsplit(url)
    origin = f"{parts.scheme}://{parts.netloc}"
    return Upstream(url=url, origin=origin, base_path=parts.path.rstrip("/"))


@dataclass(frozen=True)
class Policy:
    vendor: str
    upstream: Upstream
    timeout: float
    credentials: Credentials
    budgets: tuple[Budget, ...]
    when_exhausted: WhenExhausted
    retry: Retry
    circuit_breaker: CircuitBreaker | None
    cache: tuple[CacheRule, ...]
    dead_letter: bool
    auth_failures: AuthFailures = AuthFailures()
    refund_on: frozenset[int] = frozenset()  # the vendor's refusals it does not charge: their charge goes back
    source: str = ""

    @functools.cached_property
    def signals(self) -> frozenset[str]:
        """The vendor signals its budgets follow."""
        return frozenset(b.follow.signal for b in self.budgets if b.follow is not None and b.follow.signal)


def _check_policy(p: dict[str, Any], r: Reporter) -> None:
    seen: set[str] = set()
    for budget in p["budgets"]:
        if budget.name in seen:
            r.error("budgets", f"two budgets are named {budget.name!r}")
        seen.add(budget.name)


POLICY = Obj(
    lambda upstream, refund_on, **rest: Policy(upstream=_upstream(upstream), refund_on=frozenset(refund_on), **rest),
    {
        "vendor": Field(
            Str(pattern=VENDOR_NAME.pattern, check=_check_vendor, description="URL prefix: /{vendor}/..."),
            required=True,
        ),
        "upstream": Field(URL, required=True),
        "timeout": Field(Duration(positive=True), default=30.0),
        "credentials": Field(CREDENTIALS, default=NoCredentials()),
        "budgets": Field(ListOf(BUDGET), default=()),
        "when_exhausted": Field(Obj(WhenExhausted, {"wait": Field(Duration(), default=0.0)}), default=WhenExhausted()),
        "retry": Field(RETRY, default=Retry()),
        "circuit_breaker": Field(BREAKER),
        "cache": Field(ListOf(CACHE_RULE), default=()),
        "dead_letter": Field(Bool(), default=False),
        "auth_failures": Field(AUTH_FAILURES, default=AuthFailures()),
        "refund_on": Field(
            ListOf(
                Int(minimum=400, maximum=599),
                description="statuses the vendor does not charge against its limits (ZoomInfo: [429]): "
                "the budgets get the request's charge back",
            ),
            default=(),
        ),
    },
    check=_check_policy,
    description="one vendor's policy for the gateway",
)


@dataclass(frozen=True)
class Config:
    listen: str
    workers: int
    policies: str
    storage: str
    redis_cluster: bool
    on_storage_error: str
    max_body: int
    data_dir: str
    secret_key: Secret | None
    cache_max: int
    admin_key: Secret | None
    allow_anonymous: bool
    callers: tuple[Caller, ...]
    drain: float
    header_timeout: float
    keepalive_timeout: float
    log_format: str = "text"
    notify: Notify | None = None
    watch: bool = True
    source: str = ""

    @property
    def address(self) -> tuple[str, int]:
        parsed = parse_listen(self.listen)
        assert parsed is not None
        return parsed

    def relative(self, path: str) -> Path:
        """A path from the config, relative to the config file's folder (or the current one)."""
        p = Path(path)
        if p.is_absolute() or not self.source:
            return p
        return Path(self.source).parent / p


def _check_config(c: dict[str, Any], r: Reporter) -> None:
    if c["workers"] > 1 and c["storage"] == "memory":
        r.error(
            "workers",
            "workers > 1 needs shared storage: with storage: memory each process would keep its own "
            "budgets, breaker and tokens (and race to rotate refresh tokens); use storage: redis://...",
        )
    names: set[str] = set()
    keys: set[str] = set()
    raw_callers = r.value.get("callers")
    lines = raw_callers.lines if isinstance(raw_callers, LineList) else []
    for i, caller in enumerate(c["callers"]):
        line = lines[i] if i < len(lines) else r.value.line
        if caller.name in names:
            r.error_at(line, f"callers[{i}].name", f"two callers are named {caller.name!r}")
        if caller.key.reveal() in keys:
            r.error_at(line, f"callers[{i}].key", f"caller {caller.name!r} has the same key as another caller")
        names.add(caller.name)
        keys.add(caller.key.reveal())
        known = r.ctx.vendors
        for vendor in sorted(caller.vendors or ()):
            if known is not None and vendor not in known:
                r.error_at(line, f"callers[{i}].vendors", f"no policy for vendor {vendor!r}")


CONFIG = Obj(
    Config,
    {
        "listen": Field(Str(check=_check_listen), default="127.0.0.1:8080"),
        "workers": Field(Int(minimum=1, maximum=256), default=1),
        "policies": Field(Str(), default="./policies"),
        "storage": Field(Str(check=check_storage_url, refs=True), default="memory"),
        "redis_cluster": Field(Bool(), default=False),
        "on_storage_error": Field(Str(enum=("local", "reject", "allow")), default="local"),
        "max_body": Field(Size(), default=10 * 1024**2),
        "data_dir": Field(Str(), default="./data"),
        "secret_key": Field(SecretRef()),
        "cache_max": Field(Size(), default=256 * 1024**2),
        "admin_key": Field(SecretRef()),
        "allow_anonymous": Field(Bool(), default=False),
        "callers": Field(ListOf(CALLER), default=()),
        "drain": Field(Duration(description="how long SIGTERM waits for in-flight requests"), default=30.0),
        "header_timeout": Field(
            Duration(positive=True, description="a caller must send its request head within this, and never "
                     "pause its body longer; else 408 and the connection is closed"),
            default=10.0,
        ),
        "keepalive_timeout": Field(
            Duration(positive=True, description="how long an idle keep-alive connection of a caller is kept"),
            default=75.0,
        ),
        "log_format": Field(Str(enum=("text", "json")), default="text"),
        "notify": Field(NOTIFY),
        "watch": Field(Bool(description="reload by itself when the config or a policy file changes (polled)"),
                       default=True),
    },
    check=_check_config,
    description="the gateway's own configuration (gateway.yaml)",
)
